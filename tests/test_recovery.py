"""Recovery: index loss and rebuild_index, gc after dead writers, crash safety under SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.exceptions

import asyncdrive
from asyncdrive import (
    Drive,
    DriveFileExistsError,
    DriveNotADirectoryError,
    DriveStorageError,
    IndexLostError,
    SyncDrive,
)
from asyncdrive import _drive as drive_module
from asyncdrive import _index as index_module
from asyncdrive import _storage as storage
from asyncdrive._paths import normalize
from asyncdrive._storage import DiskStore

from .conftest import MakeDrive, raw_redis, scandir_calling
from .servers import ServerProcess


async def drop_index(redis_url: str, name: str) -> None:
    """Delete every key of a drive, as a flushed or replaced server would have lost them."""
    async with raw_redis(redis_url) as client:
        keys = [k async for k in client.scan_iter(match=f"asyncdrive:{{{name}}}:*")]
        assert keys
        await client.delete(*keys)


async def snapshot(drive: Any, components: list[str]) -> dict[str, Any]:
    state: dict[str, Any] = {"all": await drive.list(".", recursive=True)}
    for c in components:
        paths = await drive.list(".", recursive=True, component_name=c)
        state[c] = {p: await drive.info(p, component_name=c) for p in paths}
    state["folders"] = await drive.list("data")
    return state


async def test_index_loss_detected_and_rebuilt(
    make_drive: MakeDrive, drive_id: str, redis_url: str
) -> None:
    w1 = make_drive(drive_id, component_name="w1", allow_duplicates=True)
    w2 = make_drive(drive_id, component_name="w2", allow_duplicates=True)
    await w1.write_bytes("data/a.bin", b"a" * 100)
    await w1.write_bytes("data/a.bin", b"a2")  # version 2
    await w2.write_bytes("data/a.bin", b"other copy")
    await w2.write_bytes("data/deep/b.bin", os.urandom(5000))
    await w1.write_bytes("top.txt", b"t")
    await w1.write_bytes("gone.txt", b"g")
    await w1.delete("gone.txt")
    before = await snapshot(w1, ["w1", "w2"])

    await drop_index(redis_url, drive_id[6:])
    fresh = make_drive(drive_id, component_name="w1", allow_duplicates=True)
    with pytest.raises(IndexLostError, match="rebuild-index") as lost:
        await fresh.list(".")
    assert isinstance(lost.value, RuntimeError)
    assert await fresh.rebuild_index() == 4
    assert await snapshot(fresh, ["w1", "w2"]) == before
    # Versions go on increasing from where they were.
    assert (await fresh.write_bytes("top.txt", b"t2")).version == 2
    assert (await fresh.write_bytes("data/a.bin", b"a3")).version == 3


async def index_keys(redis_url: str, name: str) -> dict[str, Any]:
    """Every key of a drive's index with its value, but its change log."""
    found: dict[str, Any] = {}
    async with raw_redis(redis_url) as client:
        async for key in client.scan_iter(match=f"asyncdrive:{{{name}}}:*"):
            kind = await client.type(key)
            if kind == "hash":
                found[key] = await client.hgetall(key)
            elif kind == "zset":
                found[key] = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "string":
                found[key] = await client.get(key)
            else:
                assert kind == "stream", (key, kind)
    return found


async def test_a_rebuild_describes_a_file_replaced_while_it_walks(
    make_drive: MakeDrive, drive_id: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaced after its folder was listed (by hand, here: bytes without metadata): the
    file at the path then is indexed, not left out (then removed by gc as an orphan)."""
    drive = make_drive(drive_id)
    await drive.write_bytes("a.txt", b"first")
    component = root / "drives" / drive_id[6:] / "default"

    def replaced_once_seen(path: str, **kwargs: Any) -> str:  # (after the walk's lstat)
        if path == "a.txt":
            (component / "new").write_bytes(b"second")
            (component / "new").replace(component / "a.txt")
        return normalize(path, **kwargs)

    with monkeypatch.context() as patch:  # (undone alone: not `env` too)
        patch.setattr(storage, "normalize", replaced_once_seen)  # (as _storage calls it)
        assert await drive.rebuild_index() == 1
    info = await drive.info("a.txt")
    assert (info.size, info.checksum) == (6, hashlib.sha256(b"second").hexdigest())


async def test_a_rebuilt_index_is_the_index_it_replaces(
    make_drive: MakeDrive, drive_id: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key for key, value for value: entries, listings' sets, folders' counters, versions
    (written a few members a command here, as a large drive's are)."""
    monkeypatch.setattr(index_module, "_BULK", 3)
    name = drive_id[6:]
    for component in ("w1", "w2"):
        drive = make_drive(drive_id, component_name=component, allow_duplicates=True)
        for n in range(7):
            await drive.write_bytes(f"data/{n % 3}/f{n}.bin", b"x" * n)
        await drive.write_bytes(f"{component}.txt", b"own")
        await drive.write_bytes("data/0/f0.bin", b"v2")
    before = await index_keys(redis_url, name)
    await drop_index(redis_url, name)
    assert await make_drive(drive_id).rebuild_index() == 16
    # (The one difference: an empty field, so that even an empty drive's counters exist.)
    before[f"asyncdrive:{{{name}}}:versions"][""] = "0"
    assert await index_keys(redis_url, name) == before


async def test_an_interrupted_rebuild_leaves_the_index_lost(
    make_drive: MakeDrive, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild cut short while it clears the old index (a kill, an outage) must leave
    the index lost, to be detected and rebuilt again: not half of it, taken for whole (and
    the files it lacks for orphans by gc)."""
    drive = make_drive(drive_id)
    for n in range(5):
        await drive.write_bytes(f"d{n}/f.txt", b"x")
    for _ in range(2):  # versions 1 and 2 of a path now deleted: on no disk
        await drive.write_bytes("gone.txt", b"g")
        await drive.delete("gone.txt")
    calls = 0

    def cut_after_the_first(original: Any) -> Any:
        async def delete(self: Any, *names: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise redis.exceptions.ConnectionError("cut short")
            return await original(self, *names)

        return delete

    with monkeypatch.context() as patched:
        for client in (redis.asyncio.Redis, redis.asyncio.RedisCluster):  # (--server-kind)
            patched.setattr(client, "delete", cut_after_the_first(client.delete))
        with pytest.raises(asyncdrive.DriveUnavailableError):
            await drive.rebuild_index()
    fresh = make_drive(drive_id)
    with pytest.raises(IndexLostError):
        await fresh.list(".", recursive=True)
    assert await fresh.rebuild_index() == 5
    assert len(await fresh.list(".", recursive=True)) == 5
    assert (await fresh.write_bytes("gone.txt", b"g")).version == 3  # never reused


async def test_a_cancelled_rebuild_changes_nothing_or_all(
    env: dict[str, str], make_drive: MakeDrive, drive_id: str
) -> None:
    """Cancelled at any point (asyncio.timeout, a task group): the index is the old one or
    the rebuilt one, never half replaced (new drives found it lost; the drive that had
    seen it served the half)."""
    drive = Drive(drive_id)  # (an async one: a SyncDrive's call is not cancelled so)
    for n in range(60):
        await drive.write_bytes(f"d{n % 6}/f{n}.txt", b"x")
    turns, finished = 0, False
    while not finished:
        rebuild = asyncio.ensure_future(drive.rebuild_index())
        for _ in range(turns):
            await asyncio.sleep(0)
        finished = rebuild.done()
        rebuild.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rebuild
        assert len(await drive.list(".", recursive=True)) == 60, turns
        fresh = make_drive(drive_id)
        assert len(await fresh.list(".", recursive=True)) == 60, turns
        turns += 5
    await drive.aclose()


async def test_a_rebuild_drops_the_entry_of_a_path_naming_a_lock(
    make_drive: MakeDrive, drive_id: str, root: Path
) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("a:lock:b", b"x")
    await drive.write_bytes("kept.txt", b"k")
    (root / "drives" / drive_id[6:] / "default" / "a:lock:b").unlink()  # (bytes gone)
    assert await drive.rebuild_index() == 1
    assert await drive.list(".") == ["kept.txt"] and not await drive.exists("a:lock:b")


async def test_files_no_drive_path_names_are_left_alone_by_rebuild_and_gc(
    make_drive: MakeDrive, drive_id: str, redis_url: str, root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Files put in the drive's folder by hand under names no drive path has (not UTF-8,
    reserved, control characters) are neither indexed nor removed, and said skipped."""
    drive = make_drive(drive_id)
    await drive.write_bytes("data/a.bin", b"a")
    folder = root / "drives" / drive_id[6:] / "default" / "data"
    odd = [os.path.join(os.fsencode(folder), b"lat\xe9.bin"), os.fsencode(folder / "x\ny")]
    for name in odd:
        with open(name, "wb") as f:
            f.write(b"by hand")
    await drop_index(redis_url, drive_id[6:])
    assert await make_drive(drive_id).rebuild_index() == 1
    report = await drive.gc(grace=0)
    assert report.orphans_removed == 0 and report.entries_removed == 0
    assert await drive.list(".", recursive=True) == ["data/a.bin"]
    assert all(os.path.exists(name) for name in odd)
    assert "its name is no drive path" in caplog.text


async def test_an_index_lost_under_a_connected_drive_is_never_served_nor_restarted(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str, redis_url: str
) -> None:
    """A drive connected before the loss: every read that finds nothing, and every commit,
    checks again (a commit would start a new index that hides the loss from every process,
    and gc() would then take the files for orphans)."""
    name = drive_id[6:]
    async with Drive(drive_id) as long_lived:
        for i in range(5):
            await long_lived.write_bytes(f"data/{i}.bin", b"x")
        await drop_index(redis_url, name)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: long_lived.list("data"),
            lambda: long_lived.exists("data/0.bin"),
            lambda: long_lived.info("data/0.bin"),
            lambda: long_lived.read_bytes("data/0.bin"),
            lambda: long_lived.get("data/0.bin"),
            lambda: long_lived.delete("data/0.bin"),
            lambda: long_lived.write_bytes("new.txt", b"would hide the loss"),
            lambda: long_lived.write_bytes("data/0.bin", b"so would this"),
            lambda: long_lived.gc(grace=0),
        ]
        for call in calls:
            with pytest.raises(IndexLostError, match="rebuild"):
                await call()
    component = root / "drives" / name / "default"
    assert sorted(p.name for p in (component / "data").iterdir()) == [f"{i}.bin" for i in range(5)]
    assert not (component / "new.txt").exists() and not Path("data").exists()
    async with Drive(drive_id) as fresh:
        with pytest.raises(IndexLostError):
            await fresh.gc(grace=0)  # not: 5 orphans removed
        assert await fresh.rebuild_index() == 5
        assert await fresh.read_bytes("data/0.bin") == b"x"


def test_first_writers_of_a_new_drive_together_never_see_a_lost_index(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """The drive's marker comes with a first commit: one of several threads (each its own
    connection) writing first must not make the others take the new drive for a lost one."""
    for round_number in range(5):
        drive = SyncDrive(f"{drive_id}-{round_number}")
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def write(
            n: int,
            drive: SyncDrive = drive,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                drive.write_bytes(f"{n}.bin", b"x")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(drive.list(".")) == 8
        drive.close()


async def test_gc_refuses_a_drive_with_files_and_no_index_at_all(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str, redis_url: str
) -> None:
    """Even without the drive's marker (a disk that lost it with the index), gc() deletes
    nothing of a drive whose index does not exist."""
    name = drive_id[6:]
    async with Drive(drive_id) as drive:
        await drive.write_bytes("a.bin", b"a")
        assert (root / "drives" / name / storage.DRIVE_MARKER).exists()  # with its first commit
    await drop_index(redis_url, name)
    (root / "drives" / name / storage.DRIVE_MARKER).unlink()
    async with Drive(drive_id) as drive:
        with pytest.raises(IndexLostError):
            await drive.gc(grace=0)
        assert (root / "drives" / name / "default" / "a.bin").read_bytes() == b"a"


@pytest.mark.parametrize("lock", ["free", "held"])
async def test_gc_keeps_an_entry_put_again_while_it_looked_and_skips_files_gone_meanwhile(
    env: dict[str, str],
    workdir: Path,
    root: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
    lock: str,
) -> None:
    """``lock``: the path's lock is free when gc tries it with its batch's, or held by
    another writer, whom gc then waits for (put again meanwhile either way)."""
    name = drive_id[6:]
    store = DiskStore(root, name)
    async with Drive(drive_id) as drive, Drive(drive_id) as other:
        deleter = SyncDrive(drive_id)  # another writer, from gc's worker thread below
        await drive.write_bytes("p.bin", b"v1")
        await drive.write_bytes("going.bin", b"g")
        store.file_path("default", "p.bin").unlink()  # its bytes lost: an entry to drop...
        index = (await drive._connection()).index
        try_locks, wait_for_lock = index.try_lock_many, drive._lock

        async def put_again_first(component: str, paths: list[str], *, ttl: float) -> Any:
            if "p.bin" in paths:  # ...until another writer puts it again, just before gc locks
                if lock == "free":
                    await other.write_bytes("p.bin", b"v2")
                else:  # (its lock held meanwhile, as found: gc waits for it)
                    others = [p for p in paths if p != "p.bin"]
                    tokens = iter(await try_locks(component, others, ttl=ttl))
                    return [None if p == "p.bin" else next(tokens) for p in paths]
            return await try_locks(component, paths, ttl=ttl)

        async def put_again_while_waiting(conn: Any, component: str, path: str) -> str:
            if path == "p.bin":
                await other.write_bytes("p.bin", b"v2")
            return await wait_for_lock(conn, component, path)

        def then_deleted(entry: os.DirEntry[str]) -> None:
            if entry.name == "going.bin":  # deleted by a writer while gc walks the files
                deleter.delete(entry.name)

        monkeypatch.setattr(index, "try_lock_many", put_again_first)
        monkeypatch.setattr(drive, "_lock", put_again_while_waiting)
        # (gc's walk of the files, not of its leftovers before: os.walk's)
        walk = scandir_calling(then_deleted, walker=DiskStore._files_below)
        monkeypatch.setattr(os, "scandir", walk)
        report = await drive.gc()  # the default grace: safe while writers work
        assert (report.entries_removed, report.orphans_removed) == (0, 0)
        info = await drive.info("p.bin")
        assert (info.version, await drive.read_bytes("p.bin")) == (2, b"v2")
        assert not await drive.exists("going.bin")
        deleter.close()


async def test_gc_removes_stray_files_in_batches_but_not_one_committed_meanwhile(
    env: dict[str, str],
    workdir: Path,
    root: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """70 stray files (two batches, and 10 entries without bytes): one is put by another
    writer just before gc tries its batch's locks, and stays; another's lock is held by a
    writer a moment, and gc waits for it, then removes it."""
    store = DiskStore(root, drive_id[6:])
    async with Drive(drive_id) as drive, Drive(drive_id) as other:
        await drive.write_bytes("kept.bin", b"k")
        for i in range(10):
            await drive.write_bytes(f"lost/{i}.bin", b"l")
            store.file_path("default", f"lost/{i}.bin").unlink()
        for i in range(70):
            store.install(store.stage_bytes(b"s"), "default", f"stray/{i}.bin", {"version": 1})
        conn = await drive._connection()
        index, client = conn.index, conn.client
        try_locks, held = index.try_lock_many, index.keys.lock("default", "stray/5.bin")

        async def release_soon() -> None:
            await asyncio.sleep(0.2)
            await client.delete(held)

        async def committed_first(component: str, paths: list[str], *, ttl: float) -> Any:
            if "stray/3.bin" in paths:
                await other.write_bytes("stray/3.bin", b"put")
                assert await client.set(held, "another writer", px=30_000, nx=True)
                releasing.append(asyncio.create_task(release_soon()))
            return await try_locks(component, paths, ttl=ttl)

        releasing: list[asyncio.Task[None]] = []
        monkeypatch.setattr(index, "try_lock_many", committed_first)
        report = await drive.gc(grace=0)
        assert (report.orphans_removed, report.entries_removed) == (69, 10)
        assert releasing and releasing[0].done()
        assert await drive.list(".", recursive=True) == ["kept.bin", "stray/3.bin"]
        assert await drive.read_bytes("stray/3.bin") == b"put"
        on_disk = sorted(p.relative_to(store.base).as_posix() for p in store.base.rglob("*.bin"))
        assert on_disk == ["default/kept.bin", "default/stray/3.bin"]


async def test_rebuild_with_verify_fixes_stale_metadata(
    make_drive: MakeDrive, drive_id: str, root: Path, redis_url: str
) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("x.bin", b"old")
    # Bytes changed behind asyncdrive's back (same size): only verify=True can notice.
    (root / "drives" / drive_id[6:] / "default" / "x.bin").write_bytes(b"new")
    await drop_index(redis_url, drive_id[6:])
    fresh = make_drive(drive_id)
    assert await fresh.rebuild_index(verify=True) == 1
    assert (await fresh.info("x.bin")).checksum == hashlib.sha256(b"new").hexdigest()
    assert await fresh.read_bytes("x.bin") == b"new"  # the metadata was made right too


async def test_rebuild_fixes_the_metadata_of_bytes_whose_size_changed(
    make_drive: MakeDrive, drive_id: str, root: Path, redis_url: str
) -> None:
    """Bytes changed by hand to another size are found without verify=True, and their
    metadata fixed too: else readers refused the version indexed (DriveTimeoutError)."""
    drive = make_drive(drive_id)
    await drive.write_bytes("x.bin", b"first draft\n")
    sidecar = _sidecar_store(root, drive_id[6:])  # (a disk without attributes)
    meta = {"size": 3, "mtime": 1.0, "checksum": hashlib.sha256(b"old").hexdigest(),
            "version": 1}  # fmt: skip
    sidecar.install(sidecar.stage_bytes(b"old"), "default", "y.bin", meta)
    for path in ("x.bin", "y.bin"):
        with open(root / "drives" / drive_id[6:] / "default" / path, "ab") as edited:
            edited.write(b"edited by hand\n")
    assert await drive.rebuild_index() == 2
    assert await drive.read_bytes("x.bin") == b"first draft\nedited by hand\n"
    assert await drive.read_bytes("y.bin") == b"oldedited by hand\n"
    info = await drive.info("y.bin")
    assert info.checksum == hashlib.sha256(b"oldedited by hand\n").hexdigest()
    folder = root / "drives" / drive_id[6:] / "default"  # (fixed in its attribute)
    assert sorted(p.name for p in folder.iterdir()) == ["x.bin", "y.bin"]


async def test_bytes_of_another_size_than_their_version_are_never_served(
    make_drive: MakeDrive, drive_id: str, root: Path, tmp_path: Path
) -> None:
    """A file cut or extended on disk by hand (or by a failing disk), its metadata naming
    the indexed version, was served as that version: a get copied a tenth of the file and
    succeeded; a grown file's get and open() read different bytes."""
    drive = make_drive(drive_id)
    folder = root / "drives" / drive_id[6:] / "default" / "d"
    await drive.write_bytes("d/cut.bin", b"x" * 100_000)
    await drive.write_bytes("d/grown.bin", b"small")
    os.truncate(folder / "cut.bin", 10_000)
    with open(folder / "grown.bin", "ab") as grown:
        grown.write(b"junk")
    (tmp_path / "out.bin").write_bytes(b"mine")

    async def read_whole(path: str) -> bytes:
        assert isinstance(drive, Drive)
        async with drive.open(path) as f:
            return await f.read()

    for path, size, indexed in (("d/cut.bin", 10_000, 100_000), ("d/grown.bin", 9, 5)):
        readings: list[Callable[[], Awaitable[object]]] = [
            functools.partial(drive.get, path, to=tmp_path / "out.bin", overwrite=True),
            functools.partial(drive.read_bytes, path),
        ]
        if isinstance(drive, Drive):
            readings.append(functools.partial(read_whole, path))
        for reading in readings:
            with pytest.raises(DriveStorageError) as changed:
                await reading()
            message = str(changed.value)
            assert changed.value.errno == errno.EIO
            assert message.startswith(f"Drive {drive_id[6:]!r}: cannot ") and path in message
            assert (
                f": it is {size} bytes on disk, where its version 1 has {indexed}: its bytes "
                "were changed outside asyncdrive (or lost by the disk)" in message
            )
            assert "run rebuild_index() to index the bytes as they are" in message
    assert (tmp_path / "out.bin").read_bytes() == b"mine"
    with pytest.raises(DriveStorageError, match="changed outside"):
        await drive.get("d", to=tmp_path / "all")  # a folder's get too
    assert await drive.rebuild_index() == 2  # as the message says: taken as they are
    assert await drive.read_bytes("d/grown.bin") == b"smalljunk"
    assert (await drive.info("d/cut.bin")).size == 10_000


def _sidecar_store(root: Path, name: str) -> DiskStore:
    """A store that writes its metadata to files, as on a disk without user attributes."""
    store = DiskStore(root, name)
    store.meta_in_xattr = False
    return store


async def test_metadata_files_where_the_disk_keeps_no_attributes(
    make_drive: MakeDrive, drive_id: str, root: Path, redis_url: str
) -> None:
    """Without user extended attributes, metadata lives in a file beside the bytes, and
    installs, refusals, deletes and rebuilds all keep the two together."""
    drive = make_drive(drive_id)
    await drive.write_bytes("other.txt", b"o")
    store = _sidecar_store(root, drive_id[6:])
    first = {"size": 2, "mtime": 1.0, "checksum": hashlib.sha256(b"v1").hexdigest(),
             "version": 1}  # fmt: skip
    assert store.install(store.stage_bytes(b"v1"), "default", "a/x.bin", first) is None
    sidecar = store.meta_path("default", "a/x.bin")
    assert json.loads(sidecar.read_bytes()) == first == store.read_meta("default", "a/x.bin")
    data = store.file_path("default", "a/x.bin")
    with pytest.raises(OSError):
        os.getxattr(data, "user.asyncdrive.meta")
    # A replacement backs up both files beside them; undoing it (a refused commit) restores
    # both, and leaves no backup behind.
    second = {**first, "checksum": hashlib.sha256(b"v2").hexdigest(), "version": 2}
    backup = store.install(store.stage_bytes(b"v2"), "default", "a/x.bin", second)
    assert backup is not None
    token = backup.name.removeprefix(".asyncdrive-backup.").removesuffix(".x.bin")
    assert re.fullmatch("[0-9a-f]{8}", token), backup.name
    assert sorted(p.name for p in data.parent.iterdir()) == [
        f".asyncdrive-backup.{token}..asyncdrive-meta.x.bin.json",
        f".asyncdrive-backup.{token}.x.bin", ".asyncdrive-meta.x.bin.json", "x.bin",
    ]  # fmt: skip
    assert backup.read_bytes() == b"v1"
    assert store.installed_version("default", "a/x.bin") == 2
    store.restore(backup, "default", "a/x.bin")
    assert data.read_bytes() == b"v1"
    assert store.read_meta("default", "a/x.bin") == first
    assert sorted(p.name for p in data.parent.iterdir()) == [".asyncdrive-meta.x.bin.json", "x.bin"]
    assert list(store.tmp_dir.iterdir()) == []
    # A writer that died after backing up the bytes, before their metadata file: undoing
    # it leaves the file and its metadata as they were.
    os.link(data, data.with_name(".asyncdrive-backup.0dead000.x.bin"))
    store.restore(data.with_name(".asyncdrive-backup.0dead000.x.bin"), "default", "a/x.bin")
    assert sorted(p.name for p in data.parent.iterdir()) == [".asyncdrive-meta.x.bin.json", "x.bin"]
    assert store.read_meta("default", "a/x.bin") == first
    # The index is rebuilt from the files' metadata.
    await drop_index(redis_url, drive_id[6:])
    fresh = make_drive(drive_id)
    assert await fresh.rebuild_index() == 2
    info = await fresh.info("a/x.bin")
    assert (info.version, info.checksum, info.mtime) == (1, first["checksum"], 1.0)
    await fresh.delete("a/x.bin")
    assert not sidecar.exists() and not data.exists()


async def test_metadata_files_of_an_older_layout_are_read(
    make_drive: MakeDrive, drive_id: str, root: Path, redis_url: str
) -> None:
    """Files written with a metadata file beside them keep their metadata once asyncdrive
    writes attributes: a rebuild reads the files, a replacement's attribute wins."""
    drive = make_drive(drive_id)
    await drive.write_bytes("other.txt", b"o")
    name = drive_id[6:]
    old = {"size": 3, "mtime": 2.0, "checksum": hashlib.sha256(b"old").hexdigest(),
           "version": 7}  # fmt: skip
    _sidecar_store(root, name).install(_sidecar_store(root, name).stage_bytes(b"old"),
                                       "default", "x.bin", old)  # fmt: skip
    await drop_index(redis_url, name)
    fresh = make_drive(drive_id)
    assert await fresh.rebuild_index() == 2
    assert (await fresh.info("x.bin")).version == 7
    info = await fresh.write_bytes("x.bin", b"new")
    assert info.version == 8
    assert DiskStore(root, name).read_meta("default", "x.bin") == {
        "size": 3, "mtime": info.mtime, "checksum": info.checksum, "version": 8,
    }  # fmt: skip
    # The old metadata file goes: read again (the root copied without attributes, say),
    # it would name version 7, and readers refuse the 8 indexed.
    folder = root / "drives" / name / "default"
    assert sorted(p.name for p in folder.iterdir()) == ["other.txt", "x.bin"]
    await fresh.delete("x.bin")
    assert [p.name for p in (root / "drives" / name / "default").iterdir()] == ["other.txt"]


async def test_restarted_server_without_persistence(
    tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    server = ServerProcess(tmp_path / "srv", persistence=None)
    (tmp_path / "srv").mkdir()
    server.start()
    kwargs: dict[str, Any] = {"root": tmp_path / "root", "redis_url": server.url}
    try:
        async with Drive(drive_id, **kwargs) as drive:
            await drive.write_bytes("kept.txt", b"on disk")
        server.kill()
        server.start()  # no persistence: the index is gone, the bytes are not
        async with Drive(drive_id, **kwargs) as drive:
            with pytest.raises(IndexLostError):
                await drive.read_bytes("kept.txt")
            await drive.rebuild_index()
            assert await drive.read_bytes("kept.txt") == b"on disk"
    finally:
        server.stop()


async def test_a_rebuild_scans_a_busy_server_in_few_round_trips(
    tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """A rebuild finds a drive's old keys with SCAN, which walks every key of the server:
    1,000 a round trip (its default, 10, took ~2,000 round trips for 20,000 other keys)."""
    server = ServerProcess(tmp_path / "srv", persistence=None)
    (tmp_path / "srv").mkdir()
    server.start()
    try:
        client = redis.asyncio.Redis.from_url(server.url)
        async with client.pipeline(transaction=False) as pipe:
            for i in range(20_000):  # another application's keys
                pipe.set(f"other:{i}", "x")
            await pipe.execute()
        async with Drive(drive_id, root=tmp_path / "root", redis_url=server.url) as drive:
            await drive.write_bytes("a.txt", b"a")
            await client.config_resetstat()
            await drive.rebuild_index()
            assert await drive.list() == ["a.txt"]
        stats = await client.info("commandstats")
        await client.aclose()
        assert 20 <= stats["cmdstat_scan"]["calls"] <= 40
    finally:
        server.stop()


def old(path: Path, seconds: float = 7200) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


async def test_a_put_removes_bytes_a_cut_delete_left_in_its_way_and_nothing_else(
    make_drive: MakeDrive, drive_id: str, root: Path, workdir: Path, env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A delete cut short after its index commit leaves bytes of a version the index
    counted: a put of a path above or below them removes them. Bytes of a version never
    committed (a writer that died, or one stalled between install and commit) stay."""
    drive = make_drive(drive_id)
    for path in ("x", "f/w"):
        await drive.write_bytes(path, b"deleted")
        with monkeypatch.context() as patched:
            patched.setattr(DiskStore, "remove", lambda *args, **kwargs: False)  # (cut)
            await drive.delete(path)
    mine = root / "drives" / drive_id[6:] / "default"
    assert (mine / "x").exists() and (mine / "f" / "w").exists()
    await drive.write_bytes("x/y", b"new")  # in one call: removed, then put
    (workdir / "folder" / "w").mkdir(parents=True)
    (workdir / "folder" / "w" / "q").write_bytes(b"q")
    with pytest.raises(NotADirectoryError, match=r"they are removed now\. Retry it"):
        await drive.put("folder", to="f")  # (a folder put's batch says so)
    await drive.put("folder", to="f")
    (mine / "z").mkdir()
    (mine / "z" / "y").write_bytes(b"never committed: no metadata")
    with pytest.raises(FileExistsError, match=r"gc\(\) removes its files"):
        await drive.write_bytes("z", b"new")
    assert (mine / "z" / "y").exists()
    assert await drive.list(".", recursive=True) == ["f/w/q", "x/y"]

    # A live writer stalled between its install and its commit: its file is never taken.
    staged, go_on = threading.Event(), threading.Event()

    def stall(done: int, total: int) -> None:
        if total and done == total:
            staged.set()
            assert go_on.wait(30)

    (workdir / "l.txt").write_bytes(b"live")
    with SyncDrive(drive_id) as writer:
        putting = threading.Thread(
            target=writer.put, args=(str(workdir / "l.txt"),),
            kwargs={"to": "l/y", "progress": stall},
        )  # fmt: skip
        putting.start()
        try:
            assert await asyncio.to_thread(staged.wait, 30)
            with pytest.raises(FileExistsError, match="stand in its way"):
                await drive.write_bytes("l", b"in the way")
        finally:
            go_on.set()
            putting.join()
    assert await drive.read_bytes("l/y") == b"live"
    (mine / "e").mkdir()  # an empty folder in the way (a writer making it, or one that died)
    (mine / "n" / "i" / "d").mkdir(parents=True)
    for _ in range(2):
        with pytest.raises(FileExistsError, match="stand in its way"):
            await drive.write_bytes("e", b"x")
    assert (await drive.gc(grace=3600)).folders_removed == 0  # (maybe a writer's, at work)
    assert (await drive.gc(grace=0)).folders_removed == 4  # e, n/i/d, n/i, n (z went
    # with the orphan z/y it held)
    await drive.write_bytes("e", b"x")
    await drive.write_bytes("n", b"x")
    assert sorted(p.name for p in mine.iterdir()) == ["e", "f", "l", "n", "x"]


async def test_folder_puts_clashing_crosswise_wait_for_no_lease(
    drive_id: str, env: dict[str, str], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two folder puts, {a, b/z} and {b, a/z}, each installed its first file: each clashes
    on its second, while it holds its batch's locks. Neither waits for the other's lock
    (for its whole lease, 30 s): both are refused at once (on a Cluster, whose puts take
    another way, one of them may go through)."""
    for tree, files in (("p1", ["a", "b/z"]), ("p2", ["b", "a/z"])):
        for name in files:
            (workdir / tree / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / tree / name).write_bytes(f"{tree}:{name}".encode())
    both_installed = threading.Barrier(2, timeout=10)
    install_new = drive_module._install_new

    def install_then_wait(store: DiskStore, component: str, path: str, *args: Any,
                          **kwargs: Any) -> Any:  # fmt: skip
        installed = install_new(store, component, path, *args, **kwargs)
        if path in ("src/a", "src/b"):
            both_installed.wait()
        return installed

    monkeypatch.setattr(drive_module, "_install_new", install_then_wait)
    async with Drive(drive_id) as one, Drive(drive_id) as other:
        await one.write_bytes("seed", b"s")
        with anyio.fail_after(20):
            results = await asyncio.gather(
                one.put(workdir / "p1", to="src"), other.put(workdir / "p2", to="src"),
                return_exceptions=True,
            )  # fmt: skip
    clashes = (DriveNotADirectoryError, DriveFileExistsError)
    assert all(r is None or isinstance(r, clashes) for r in results), results
    assert any(isinstance(r, clashes) for r in results), results  # (a path is file or folder)


async def test_gc_ages_files_by_the_disks_clock(
    env: dict[str, str], root: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc on a machine whose clock is 2 h ahead of the disk's (a file server's) took a
    file made a moment ago, a put's before its commit, for one 2 h old and removed it; a
    file or folder stamped 2 h ahead of the disk (by a broken clock) never grew old."""
    component = root / "drives" / drive_id[6:] / "default"
    async with Drive(drive_id) as drive:
        await drive.write_bytes("kept.txt", b"k")
        (component / "young.bin").write_bytes(b"y")  # no entry: as a put's, not committed
        (component / "young").mkdir()
        ahead = time.time() + 7200
        for made in (component / "future.bin", component / "future"):
            made.write_bytes(b"f") if made.suffix else made.mkdir()
            os.utime(made, (ahead, ahead))
        wall = time.time
        monkeypatch.setattr(time, "time", lambda: wall() + 7200)
        report = await drive.gc(grace=3600)
        assert (report.orphans_removed, report.folders_removed) == (1, 1)
        assert sorted(p.name for p in component.iterdir()) == ["kept.txt", "young", "young.bin"]
        assert await drive.read_bytes("kept.txt") == b"k"


async def test_gc_that_takes_longer_than_its_grace_keeps_what_came_meanwhile(
    env: dict[str, str], root: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its clock read at its start, a gc longer than its grace took a file (a put's, before
    its commit) and a folder made meanwhile for ones ``grace`` s in the future: old."""
    component = root / "drives" / drive_id[6:] / "default"
    leftovers = DiskStore.leftovers

    def then_a_put_begins(self: DiskStore, *args: Any) -> Any:
        found = leftovers(self, *args)
        time.sleep(1.5)  # (settling dead writers' backups, say)
        (component / "young.bin").write_bytes(b"y")
        (component / "young").mkdir()
        return found

    async with Drive(drive_id) as drive:
        await drive.write_bytes("kept.txt", b"k")
        monkeypatch.setattr(DiskStore, "leftovers", then_a_put_begins)
        report = await drive.gc(grace=1)
        assert (report.orphans_removed, report.folders_removed) == (0, 0)
        assert sorted(p.name for p in component.iterdir()) == ["kept.txt", "young", "young.bin"]


async def test_gc_ages_what_it_found_by_times_read_after_the_disks_clock(
    env: dict[str, str], root: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass longer than the grace: an upload (named, as on NFS) or a new file still being
    written, stamped as the pass found it and aged by the clock read at its end, was taken
    for as old as the pass was long, and removed under its writer."""
    store = DiskStore(root, drive_id[6:])
    component = store.base / "default"
    async with Drive(drive_id) as drive:
        await drive.write_bytes("kept.txt", b"k")
        upload, written = store.tmp_dir / "upload", component / "written.bin"
        store.tmp_dir.mkdir(exist_ok=True)
        for made in (upload, written):
            made.write_bytes(b"begun")
        walk, listed = storage._walk_every_folder, DiskStore.file_paths

        def written_on(*_: Any) -> None:  # the pass takes 1.5 s; the writers go on meanwhile
            time.sleep(1.5)
            for made in (upload, written):
                with made.open("ab") as f:
                    f.write(b", more")

        def slow_walk(top: Path) -> Any:
            yield from walk(top)
            written_on()

        def slow_listing(self: DiskStore) -> Any:
            found = listed(self)
            written_on()
            return found

        monkeypatch.setattr(storage, "_walk_every_folder", slow_walk)
        monkeypatch.setattr(DiskStore, "file_paths", slow_listing)
        report = await drive.gc(grace=1)
        assert (report.uploads_removed, report.orphans_removed) == (0, 0)
        assert upload.exists() and written.exists()


async def test_gc_cleans_up_after_dead_writers(
    env: dict[str, str], root: Path, workdir: Path, drive_id: str
) -> None:
    name = drive_id[6:]
    store = DiskStore(root, name)
    # Uploads with a name in .tmp, as a streaming writer's are (and every upload where the
    # disk has no O_TMPFILE): an upload without one leaves nothing behind for gc.
    store.unnamed_uploads = False
    async with Drive(drive_id) as drive:
        await drive.write_bytes("kept.txt", b"v1")
        await drive.write_bytes("replaced.txt", b"v1")
        await drive.write_bytes("dangling.txt", b"x")
        watch = drive.watch()
        # A writer died after writing its temporary upload.
        leftover = store.stage_bytes(b"half an upload")
        old(leftover.tmp)
        # A writer died after installing a replacement, before committing it.
        staged = store.stage_bytes(b"v2 never committed")
        meta = {"path": "replaced.txt", "version": 2, "component_name": "default"}
        backup = store.install(staged, "default", "replaced.txt", meta)
        assert backup is not None, "a replacement keeps a backup of what it replaced"
        # A writer died after removing the index entry of a delete, before the bytes.
        orphan = store.stage_bytes(b"orphan")
        store.install(orphan, "default", "orphan.txt", {"version": 1})
        old(store.file_path("default", "orphan.txt"))
        # Bytes removed behind asyncdrive's back.
        store.file_path("default", "dangling.txt").unlink()
        # Work in progress (younger than the grace period) is left alone: this upload, and
        # the backup, which is aged by when it was made (its ctime, which no test can age).
        fresh_upload = store.stage_bytes(b"in progress")

        report = await drive.gc(grace=600)
        assert (report.uploads_removed, report.installs_undone, report.installs_kept) == (1, 0, 0)
        assert (report.orphans_removed, report.entries_removed) == (1, 1)
        assert backup.read_bytes() == b"v1"
        assert not store.file_path("default", "orphan.txt").exists()
        assert await drive.list(".") == ["kept.txt", "replaced.txt"]
        assert [p.name for p in store.tmp_dir.iterdir()] == [fresh_upload.tmp.name]
        # (The watch may start with a change committed a moment before it was made.)
        changes = []
        while (event := await watch.next(0.5)) is not None:
            changes.append((event.change, event.path))
        assert changes[-1:] == [("deleted", "dangling.txt")]

        report = await drive.gc(grace=0)  # now the backup and the upload count as old
        assert report == type(report)(uploads_removed=1, installs_undone=1)
        assert await drive.read_bytes("replaced.txt") == b"v1"
        assert store.file_path("default", "replaced.txt").read_bytes() == b"v1"
        assert not backup.exists()
        assert list(store.tmp_dir.iterdir()) == []
        assert await drive.gc(grace=0) == type(report)()  # nothing left to do


async def test_each_put_backs_up_under_a_name_of_its_own(
    make_drive: MakeDrive, drive_id: str, root: Path
) -> None:
    """A put drops its backup after its commit, without the lock: by then the next put of
    the path may have backed up the file, and that backup must be left alone."""
    drive = make_drive(drive_id)
    store = DiskStore(root, drive_id[6:])
    target = store.file_path("default", "x.bin")
    await drive.write_bytes("x.bin", b"v1")
    first = store.install(store.stage_bytes(b"v2"), "default", "x.bin", {"version": 2})
    # (committed here, the lock released, its backup not dropped yet)
    second = store.install(store.stage_bytes(b"v3"), "default", "x.bin", {"version": 3})
    assert first is not None and second is not None and first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"v1", b"v2")
    store.drop_backup(first)  # the first put's tidying up, late
    assert second.read_bytes() == b"v2"
    store.restore(second, "default", "x.bin")  # the second's commit was refused
    assert target.read_bytes() == b"v2"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


async def test_a_dead_writers_backup_does_not_stop_the_next_put_and_gc_settles_it(
    make_drive: MakeDrive, drive_id: str, root: Path
) -> None:
    drive = make_drive(drive_id)
    store = DiskStore(root, drive_id[6:])
    target = store.file_path("default", "x.bin")
    await drive.write_bytes("x.bin", b"v1")
    # Died before its commit: the file holds uncommitted bytes, the backup version 1.
    dead = store.install(store.stage_bytes(b"dead"), "default", "x.bin", {"version": 2})
    assert dead is not None and dead.read_bytes() == b"v1"
    await drive.write_bytes("x.bin", b"v2")  # replaces the dead writer's bytes, commits
    assert await drive.read_bytes("x.bin") == b"v2"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([dead.name, "x.bin"])
    report = await drive.gc(grace=0)
    assert (report.installs_kept, report.installs_undone) == (1, 0)  # the index has v2
    assert target.read_bytes() == b"v2"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]
    # Died before its commit, and the next put's commit was refused: gc puts version 2
    # back, from the dead writer's backup.
    dead = store.install(store.stage_bytes(b"dead"), "default", "x.bin", {"version": 3})
    refused = store.install(store.stage_bytes(b"refused"), "default", "x.bin", {"version": 3})
    assert dead is not None and refused is not None
    store.restore(refused, "default", "x.bin")
    assert target.read_bytes() == b"dead"
    report = await drive.gc(grace=0)
    assert (report.installs_kept, report.installs_undone) == (0, 1)
    assert await drive.read_bytes("x.bin") == target.read_bytes() == b"v2"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


async def test_readers_read_the_committed_bytes_while_a_replacement_is_not_committed(
    make_drive: MakeDrive, drive_id: str, root: Path, workdir: Path
) -> None:
    """Between a replacement's rename and its commit (its writer dead there, say), the
    file at the path holds bytes the index does not know: readers read the backup beside
    it, the version the index has, until a commit or `gc()` settles the path."""
    drive = make_drive(drive_id)
    store = DiskStore(root, drive_id[6:])
    sizes = {"d/small.bin": 100, "d/large.bin": 3 << 20}  # copied in the loop / a worker thread
    committed: dict[str, bytes] = {}
    for path, size in sizes.items():
        committed[path] = os.urandom(size)
        await drive.write_bytes(path, committed[path])
        # Died before its commit: other bytes, of another size, at the path.
        dead = store.install(
            store.stage_bytes(b"never committed" * 1000), "default", path, {"version": 2}
        )
        assert dead is not None and dead.read_bytes() == committed[path]
    assert store.meta_in_xattr  # (where metadata lives in files, readers read the path)
    for path, data in committed.items():
        assert store.file_path("default", path).read_bytes() != data
        assert await drive.read_bytes(path) == data
        await drive.get(path, to=f"out/{path}")
        assert (workdir / "out" / path).read_bytes() == data
        assert (await drive.info(path)).version == 1
    # Gets side by side (their copies made together in a worker thread), and a folder get.
    await asyncio.gather(*(drive.get(p, to=f"side/{p}") for p in committed))
    await drive.get("d", to="folder/d")
    for path, data in committed.items():
        assert (workdir / "side" / path).read_bytes() == data
        assert (workdir / "folder" / path).read_bytes() == data
    if isinstance(drive, Drive):  # an open reader keeps the committed version
        async with drive.open("d/large.bin") as f:
            assert f.info.version == 1 and await f.read() == committed["d/large.bin"]
    # Once a put commits over it, readers read that; gc() then drops the backup.
    await drive.write_bytes("d/small.bin", b"v2")
    assert await drive.read_bytes("d/small.bin") == b"v2"
    report = await drive.gc(grace=0)
    assert (report.installs_kept, report.installs_undone) == (1, 1)
    assert await drive.read_bytes("d/large.bin") == committed["d/large.bin"]


async def test_readers_read_the_committed_bytes_where_metadata_lives_in_files(
    make_drive: MakeDrive, drive_id: str, root: Path, workdir: Path
) -> None:
    """A replacement of the same size, renamed in with its metadata file (a disk without
    user attributes) by a writer that died before its commit: readers read the backup of
    the version indexed, as where the metadata is an attribute (the size told nothing)."""
    drive = make_drive(drive_id)
    store = _sidecar_store(root, drive_id[6:])
    committed = {"d/small.bin": b"A" * 100, "d/large.bin": b"A" * (3 << 20)}
    for path, data in committed.items():
        await drive.write_bytes(path, data)
        never = b"B" * len(data)
        meta = {"size": len(never), "mtime": 1.0, "version": 2,
                "checksum": hashlib.sha256(never).hexdigest()}  # fmt: skip
        assert store.install(store.stage_bytes(never), "default", path, meta) is not None
        assert store.file_path("default", path).read_bytes() == never
    for path, data in committed.items():
        assert await drive.read_bytes(path) == data
        await drive.get(path, to=f"out/{path}")
        assert (workdir / "out" / path).read_bytes() == data
        if isinstance(drive, Drive):
            async with drive.open(path) as f:
                assert (f.info.version, await f.read()) == (1, data)
    report = await drive.gc(grace=0)  # (the dead writer's, undone)
    assert report.installs_undone == 2
    for path, data in committed.items():
        assert store.file_path("default", path).read_bytes() == data


async def test_gc_drops_a_backup_whose_file_has_no_entry(
    make_drive: MakeDrive, drive_id: str, root: Path
) -> None:
    drive = make_drive(drive_id)
    store = DiskStore(root, drive_id[6:])
    # An orphan (a delete cut short), then a replacement of it that died before its commit:
    # the index has no entry, so gc removes both the file and the backup.
    store.install(store.stage_bytes(b"orphan"), "default", "o.bin", {"version": 1})
    backup = store.install(store.stage_bytes(b"new"), "default", "o.bin", {"version": 1})
    assert backup is not None
    report = await drive.gc(grace=0)
    assert (report.installs_undone, report.orphans_removed) == (1, 0)
    assert not backup.exists() and not store.file_path("default", "o.bin").exists()
    # A delete leaves a dead writer's backup (it may be a live put's), which gc removes.
    await drive.write_bytes("d/x.bin", b"v1")
    backup = store.install(store.stage_bytes(b"dead"), "default", "d/x.bin", {"version": 2})
    assert backup is not None
    await drive.delete("d/x.bin")
    assert not store.file_path("default", "d/x.bin").exists()
    assert backup.read_bytes() == b"v1"
    report = await drive.gc(grace=0)
    assert (report.installs_undone, report.installs_kept) == (1, 0)
    assert not backup.exists() and not backup.parent.exists()
    assert await drive.gc(grace=0) == type(report)()


KILLED_WRITING = """
import os, signal, sys
from asyncdrive import SyncDrive, _storage

def half_then_killed(fd, data):
    os.write(fd, bytes(data[: len(data) // 2]))
    os.kill(os.getpid(), signal.SIGKILL)

class KilledMarking:  # killed once the file is made, before it is marked unfinished
    def __getattr__(self, name):
        return getattr(os, name)

    def setxattr(self, fd, name, value, *args):
        if value == _storage._UNFINISHED_ATTRIBUTE:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.setxattr(fd, name, value, *args)

with SyncDrive(sys.argv[1]) as drive:
    drive.write_bytes("first.txt", b"finds out what the disk keeps")
    if sys.argv[3] == "made":
        _storage.os = KilledMarking()
    else:
        _storage._write_all = half_then_killed
    drive.write_bytes(sys.argv[2], b"x" * 1000)
"""


async def test_a_new_file_whose_writer_was_killed_writing_it_in_place_is_never_indexed(
    env: dict[str, str], root: Path, workdir: Path, drive_id: str
) -> None:
    """A new small file is written straight at its path (`DiskStore.open_new`): a writer
    killed halfway leaves it there, marked unfinished (by its sticky bit until its
    attribute says so: killed in between, it has no metadata). Readers and listings never
    see it, `rebuild_index` skips it, a put replaces it, and `gc` removes it."""
    if storage.filesystem_type(root) not in storage._NEW_NAMES_DURABLE:
        pytest.skip("this disk needs the folder's fsync: new files go through uploads")
    async with Drive(drive_id) as drive:
        await drive.exists("x")
        assert drive._conn is not None
        if drive._conn.index.wire is None:
            pytest.skip("on a Cluster every put takes the lock: its upload goes through .tmp")
    for path, killed in (("a/replaced.txt", "writing"), ("removed.txt", "writing"),
                         ("made.txt", "made")):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", KILLED_WRITING, drive_id, path, killed],
            cwd=workdir,
            env=env,
        )
        assert proc.returncode == -signal.SIGKILL
    store = DiskStore(root, drive_id[6:])
    left = {f.path: f for f in store.scan(verify=False)}
    assert sorted(left) == ["a/replaced.txt", "first.txt", "made.txt", "removed.txt"]
    assert not left["removed.txt"].finished and left["removed.txt"].size == 500
    made = store.file_path("default", "made.txt")
    fd = os.open(made, os.O_RDONLY)
    try:
        assert storage.meta_on_disk(fd) is None and os.fstat(fd).st_mode & stat.S_ISVTX
    finally:
        os.close(fd)
    assert not left["made.txt"].finished and left["made.txt"].size == 0
    async with Drive(drive_id) as drive:
        assert await drive.list(".", recursive=True) == ["first.txt"]
        with pytest.raises(FileNotFoundError):
            await drive.read_bytes("removed.txt")
        assert await drive.rebuild_index() == 1
        assert await drive.list(".", recursive=True) == ["first.txt"]
        await drive.write_bytes("a/replaced.txt", b"complete")
        assert await drive.read_bytes("a/replaced.txt") == b"complete"
        report = await drive.gc(grace=0)
        assert report.orphans_removed == 2 and report.installs_undone == 0
        assert await drive.list(".", recursive=True) == ["a/replaced.txt", "first.txt"]
    assert not store.file_path("default", "removed.txt").exists() and not made.exists()
    assert all(f.finished for f in store.scan(verify=True))
    # A file written in place keeps no sticky bit once marked (nor once finished).
    modes = {
        p: store.file_path("default", p).stat().st_mode for p in ("first.txt", "a/replaced.txt")
    }
    assert not any(mode & stat.S_ISVTX for mode in modes.values())


WORKER = """
import os, random, sys
from asyncdrive import SyncDrive
drive = SyncDrive(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
print("ready", flush=True)
while True:
    path = f"f{rng.randrange(6)}.bin"
    if rng.random() < 0.3:
        try:
            drive.delete(path)
        except FileNotFoundError:
            pass
    else:
        drive.write_bytes(path, os.urandom(rng.randrange(1, 300_000)))
"""


@pytest.mark.slow
def test_crash_safety_under_sigkill(
    env: dict[str, str], root: Path, workdir: Path, drive_id: str
) -> None:
    rng = random.Random(7)
    kills = 50
    for n in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKER), drive_id, str(n)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.15))  # let it get somewhere in a put or delete
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
    store = DiskStore(root, drive_id[6:])
    with SyncDrive(drive_id) as drive:
        # Readers never see a partial file, even before recovery: what they read is the
        # committed version, or a complete one installed by a writer killed before its
        # commit (whose metadata beside it records its checksum).
        for path in drive.list("."):
            info = drive.info(path)
            read = hashlib.sha256(drive.read_bytes(path)).hexdigest()
            installed = (store.read_meta("default", path) or {}).get("checksum")
            assert read in {info.checksum, installed}
        drive.gc(grace=0)  # no writer is alive: everything left is garbage
        indexed = {p: drive.info(p) for p in drive.list(".")}
        on_disk = {f.path: f for f in store.scan(verify=True)}
    assert sorted(indexed) == sorted(on_disk)
    for path, info in indexed.items():
        assert on_disk[path].checksum == info.checksum
        assert (store.read_meta("default", path) or {}).get("version") == info.version
    assert list(store.tmp_dir.iterdir()) == []


async def test_two_gcs_at_once_count_each_file_once(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str
) -> None:
    store = DiskStore(root, drive_id[6:])
    store.unnamed_uploads = False  # uploads with a name, for gc to find
    async with Drive(drive_id) as first, Drive(drive_id) as second:
        await first.write_bytes("kept.txt", b"k")
        for i in range(30):  # writers that died: orphans and uploads, old enough for gc
            store.install(store.stage_bytes(b"o"), "default", f"orphan/{i}", {"version": 1})
            old(store.file_path("default", f"orphan/{i}"))
            old(store.stage_bytes(b"half").tmp)
        reports = await asyncio.gather(first.gc(grace=600), second.gc(grace=600))
        assert sum(r.orphans_removed for r in reports) == 30
        assert sum(r.uploads_removed for r in reports) == 30
        assert await first.list(".") == ["kept.txt"] and not any(store.tmp_dir.iterdir())


async def test_names_refused_for_new_files_only_stay_readable(
    make_drive: MakeDrive, drive_id: str, redis_url: str, root: Path
) -> None:
    """A name with a C1 control character or a line separator is refused for a new file,
    but one made before that rule (found by a rebuild here) is indexed, read and deleted."""
    drive = make_drive(drive_id)
    await drive.write_bytes("k/first.txt", b"f")
    folder = root / "drives" / drive_id[6:] / "default" / "k"
    (folder / "a\u2028b").write_bytes(b"made before the rule")
    await drop_index(redis_url, drive_id[6:])
    assert await make_drive(drive_id).rebuild_index() == 2
    assert await drive.list("k") == ["k/a\u2028b", "k/first.txt"]
    assert await drive.read_bytes("k/a\u2028b") == b"made before the rule"
    with pytest.raises(asyncdrive.InvalidPathError, match="line separators"):
        await drive.write_bytes("k/a\u2028b", b"replaced")
    await drive.delete("k/a\u2028b")
    assert await drive.list("k") == ["k/first.txt"]


KILLED_GETTER = """
import sys, time
from asyncdrive import SyncDrive

def stall(done, total):
    if done:  # (a first report, of 0, comes before the copy)
        print("copying", flush=True)
        time.sleep(60)

with SyncDrive(sys.argv[1]) as drive:
    drive.get("big.bin", to="out/big.bin", overwrite=sys.argv[2] == "1", progress=stall)
"""


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_get_killed_while_it_copies_leaves_nothing_beside_its_target(
    env: dict[str, str], workdir: Path, drive_id: str, overwrite: bool
) -> None:
    """A get with overwrite=True copied into a named temporary file: killed during the copy,
    it left up to the whole file's bytes under a reserved name beside the target, which a
    later put of that folder refused (and no gc() ever sees: it is outside the root)."""
    with SyncDrive(drive_id) as drive:
        drive.write_bytes("big.bin", os.urandom(24 << 20))  # (copied in steps: reported)
    (workdir / "out").mkdir()
    if overwrite:
        (workdir / "out" / "big.bin").write_bytes(b"old")
    getter = subprocess.Popen(
        [sys.executable, "-c", KILLED_GETTER, drive_id, str(int(overwrite))],
        cwd=workdir, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert getter.stdout is not None
    with getter.stdout:
        assert getter.stdout.readline() == "copying\n"
    getter.kill()
    assert getter.wait() == -signal.SIGKILL
    expected = ["big.bin"] if overwrite else []
    assert sorted(p.name for p in (workdir / "out").iterdir()) == expected
    if overwrite:
        assert (workdir / "out" / "big.bin").read_bytes() == b"old"
        with SyncDrive(drive_id) as drive:  # the folder puts as it is
            drive.put(workdir / "out", to="again")
            assert drive.list("again") == ["again/big.bin"]

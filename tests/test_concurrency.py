"""Concurrent writers: processes putting, replacing and deleting the same paths at once.

Every worker is a real process (this module run with ``python -m``), released at the same
moment, logging each operation that returned as one JSON line. Afterwards the drive is
checked against the disk, the change log against the logs, and the versions against both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import asyncdrive._client
import asyncdrive._drive
import asyncdrive._index
import asyncdrive._storage
import asyncdrive._threads
from asyncdrive import (
    Change,
    Drive,
    DriveClosedError,
    DriveError,
    DriveEvent,
    DriveFileExistsError,
    DriveFileNotFoundError,
    DriveIsADirectoryError,
    DriveNotADirectoryError,
    DriveTimeoutError,
    FileInfo,
    SyncDrive,
    VersionConflictError,
)
from asyncdrive._storage import DiskStore

from .conftest import REPO, MakeDrive, SyncAsAsync, hold_commits, raw_redis
from .procs import stop_all

Key = tuple[str, str]  # (component, path)

#: The path of the event that closes a test's change log: everything before it is the test's.
END_MARKER = "end.marker"
END_COMPONENT = "checker"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- running workers --------------------------------------------------------------------------


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a worker: the test's, with this repository importable."""
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path}


@contextlib.contextmanager
def workers(
    module: str,
    argvs: Sequence[Sequence[str]],
    *,
    env: dict[str, str],
    cwd: Path,
    prefix: str = "p",
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start one worker per argv, each in its own folder under ``cwd``; kill any left at exit.

    A worker prints ``ready`` once connected, then waits for a line on stdin: `release` sends
    it to all of them at once.
    """
    procs: list[subprocess.Popen[str]] = []
    try:
        for n, argv in enumerate(argvs):
            folder = cwd / f"{prefix}{n}"
            folder.mkdir()
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-W", "error", "-m", module, *argv],
                    cwd=folder,
                    env=worker_env(env),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        yield procs
    finally:
        stop_all(procs)


def release(procs: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until every worker is ready, then let them all go at once."""
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line != "ready\n":
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"worker did not start ({line!r}):\n{err}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def results(procs: Sequence[subprocess.Popen[str]], *, timeout: float) -> list[list[Any]]:
    """Wait for every worker to end well; return each one's JSON lines."""
    deadline = time.monotonic() + timeout
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{err}"
        outputs.append([json.loads(line) for line in out.splitlines()])
    return outputs


async def wait_until_go() -> None:
    """In a worker: say ready, then wait for the test to release all workers at once."""
    print("ready", flush=True)
    assert await anyio.to_thread.run_sync(sys.stdin.readline) == "go\n"


def write_local(path: str, data: bytes) -> None:
    """In a worker: write the local file ``path``, clearing a local file or folder in the way."""
    top = Path(path.split("/")[0])
    if top.is_dir():
        shutil.rmtree(top)
    top.unlink(missing_ok=True)
    local = Path(path)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)


def open_drive(drive_id: str, face: str, **kwargs: Any) -> Any:
    """In a worker: a `Drive`, or a `SyncDrive` given the awaitable methods of a Drive."""
    return (
        Drive(drive_id, **kwargs) if face == "async" else SyncAsAsync(SyncDrive(drive_id, **kwargs))
    )


# -- checking a drive -------------------------------------------------------------------------


def index_state(drive: SyncDrive, components: Iterable[str]) -> dict[Key, FileInfo]:
    """Every (component, path) entry of the index, as `info` gives it."""
    state: dict[Key, FileInfo] = {}
    for component in sorted(set(components)):
        for path in drive.list(".", recursive=True, component_name=component):
            state[component, path] = drive.info(path, component_name=component)
    assert sorted(drive.list(".", recursive=True)) == sorted({p for _, p in state})
    return state


def folders_of(paths: Iterable[str]) -> dict[str, set[str]]:
    """Map every folder ("" the root) to the entries directly below it, as `list` shows them."""
    children: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        parts = path.split("/")
        for depth in range(len(parts)):
            children["/".join(parts[:depth])].add("/".join(parts[: depth + 1]))
    return children


def check_listings(drive: SyncDrive, state: dict[Key, FileInfo], folders: Iterable[str]) -> None:
    """Check ``list`` and ``exists`` of each folder (all components, and each) against the index."""
    files = {p for _, p in state}
    for component in [None, *sorted({c for c, _ in state})]:
        mine = {p for c, p in state if component in (None, c)}
        expected = folders_of(mine)
        for folder in sorted({"", *folders}):
            if folder in files:
                with pytest.raises(DriveNotADirectoryError):
                    drive.list(folder, component_name=component)
            else:
                listed = drive.list(folder or ".", component_name=component)
                assert listed == sorted(expected.get(folder, set())), (component, folder)
            if folder:
                exists = drive.exists(folder, component_name=component)
                assert exists == (folder in expected or folder in mine), (component, folder)


def check_disk(
    drive: SyncDrive, root: Path, state: dict[Key, FileInfo], *, read: bool = True
) -> None:
    """Check that the bytes on disk are exactly the index: same files, sizes, checksums."""
    store = DiskStore(root, drive.name)
    on_disk = {(f.component, f.path): f for f in store.scan(verify=True)}
    assert sorted(on_disk) == sorted(state), "disk files and index entries differ"
    for key, info in state.items():
        found = on_disk[key]
        assert (found.size, found.checksum, found.version) == (
            info.size,
            info.checksum,
            info.version,
        ), key
        if read:
            data = drive.read_bytes(info.path, component_name=info.component_name)
            assert sha256(data) == info.checksum, key
    assert store.leftovers(grace=0) == ([], []), "uploads or backups left behind"


def change_log(drive: SyncDrive) -> list[DriveEvent]:
    """Every event of the drive, in order, up to the end marker this writes first."""
    with SyncDrive(drive.id, component_name=END_COMPONENT) as checker:
        checker.write_bytes(END_MARKER, b"end")
        events: list[DriveEvent] = []
        # The timeout only bounds a failure: the marker ends the log.
        with checker.watch(since="0", timeout=60) as feed:
            for event in feed:
                if (event.component_name, event.path) == (END_COMPONENT, END_MARKER):
                    return events
                events.append(event)
    raise AssertionError(f"the end marker never arrived (after {len(events)} events)")


def replay(events: Iterable[DriveEvent]) -> dict[Key, tuple[int, str]]:
    """Check the log's own consistency and return the state it leads to.

    Each ``added`` is of an absent copy, each ``modified`` or ``deleted`` of a present one (a
    delete names the version it removed), and the versions of each (component, path)
    strictly increase in the order of the log, never reused after a delete.
    """
    state: dict[Key, tuple[int, str]] = {}
    last: dict[Key, int] = {}
    for event in events:
        key = (event.component_name, event.path)
        if event.change == Change.DELETED:
            assert state.pop(key, None) == (event.version, event.checksum), event
            continue
        assert (key in state) == (event.change == Change.MODIFIED), event
        assert event.version > last.get(key, 0), event
        state[key] = event.version, event.checksum
        last[key] = event.version
    return state


# -- concurrent writers of the same paths ----------------------------------------------------

WRITERS = 6
OPS = 160


def folders_below(paths: Iterable[str]) -> list[str]:
    """The folders that ``paths`` would need, e.g. ``["d", "d/e"]`` for ``["d/e/f"]``."""
    return sorted(folders_of(paths).keys() - {""})


async def writer(
    drive_id: str, component: str, allow_duplicates: bool, seed: int, paths: list[str]
) -> None:
    """Put (bytes or a local file), replace and delete ``paths`` at random; log what returned."""
    rng = random.Random(seed)
    face = "async" if seed % 2 else "sync"
    drive = open_drive(drive_id, face, component_name=component, allow_duplicates=allow_duplicates)
    # Refusals the API documents: a copy deleted by another process, a path owned by another
    # component, and where one path is a folder of another, a file or folder in the way.
    expected: tuple[type[Exception], ...] = (DriveFileNotFoundError, DriveFileExistsError)
    if set(paths) & set(folders_below(paths)):
        expected += (DriveNotADirectoryError, DriveIsADirectoryError)
    try:
        await drive.exists(".")  # connected before the start
        await wait_until_go()
        for n in range(OPS):
            path = rng.choice(paths)
            # Unique content: each put is recognisable in the change log by its checksum.
            data = f"{component} {seed} {n} {path}\n".encode() + rng.randbytes(rng.randrange(2000))
            op = rng.choices(["write", "put", "delete"], [4, 3, 3])[0]
            record: dict[str, Any] = {"op": op, "path": path, "component": component}
            try:
                if op == "write":
                    info = await drive.write_bytes(path, data)
                    record.update(version=info.version, checksum=info.checksum)
                    record.update(sent=sha256(data))
                elif op == "put":
                    write_local(path, data)
                    await drive.put(path)
                    record.update(checksum=sha256(data))
                else:
                    await drive.delete(path)
            except expected as exc:
                record.update(error=type(exc).__name__)
            except Exception as exc:
                record.update(error=type(exc).__name__)
                # A put that held the commit lock past its lease is refused and leaves
                # nothing behind (seen once in CI: the machine paused, or its clock stepped).
                if not (isinstance(exc, DriveTimeoutError) and "lease" in str(exc)):
                    record.update(unexpected=repr(exc))
            print(json.dumps(record))
    finally:
        await drive.aclose()


FLAT = ["a.bin", "b.bin", "d/c.bin", "d/e/f.bin"]
NESTED = ["x", "x/y", "x/y/z", "w"]
SCENARIOS = {
    # One component: every process replaces and deletes the same copies.
    "one-component": (["c0"] * WRITERS, False, FLAT),
    # A component each, no duplicates: they race to own each path.
    "owners": ([f"c{n}" for n in range(WRITERS)], False, FLAT),
    # Three components, two processes each, every component keeping its own copy.
    "duplicates": ([f"c{n % 3}" for n in range(WRITERS)], True, FLAT),
    # One path is a folder of another: at most one of them can exist at a time.
    "file-and-folder": (["c0"] * WRITERS, False, NESTED),
    "file-and-folder-components": ([f"c{n}" for n in range(WRITERS)], True, NESTED),
}


@pytest.mark.parametrize(
    "scenario",
    [pytest.param(name) for name in SCENARIOS],
)
def test_concurrent_writers_of_the_same_paths(
    scenario: str, env: dict[str, str], root: Path, workdir: Path, drive_id: str
) -> None:
    components, allow_duplicates, paths = SCENARIOS[scenario]
    argvs = [
        ["writer", drive_id, component, str(int(allow_duplicates)), str(seed), json.dumps(paths)]
        for seed, component in enumerate(components)
    ]
    with workers(__name__, argvs, env=env, cwd=workdir) as procs:
        release(procs)
        logs = results(procs, timeout=120)
    records = [record for log in logs for record in log]
    assert len(records) == WRITERS * OPS
    assert [r for r in records if "unexpected" in r] == []
    done = [r for r in records if "error" not in r]
    for record in done:
        if record["op"] == "write":
            assert record["checksum"] == record["sent"]

    with SyncDrive(drive_id) as drive:
        state = index_state(drive, [*components, END_COMPONENT])
        check_disk(drive, root, state)
        check_listings(drive, state, folders_below(paths))
        events = change_log(drive)

    # The change log is consistent and leads to the index.
    assert replay(events) == {
        key: (info.version, info.checksum) for key, info in state.items() if key[0] != END_COMPONENT
    }
    # One event per operation that returned, none for one that raised: the puts are matched
    # one to one by their (unique) content; the deletes by count.
    puts = [r for r in done if r["op"] != "delete"]
    put_events = [e for e in events if e.change != Change.DELETED]
    assert Counter((r["component"], r["path"], r["checksum"]) for r in puts) == Counter(
        (e.component_name, e.path, e.checksum) for e in put_events
    )
    deletes = Counter((r["component"], r["path"]) for r in done if r["op"] == "delete")
    assert deletes == Counter((e.component_name, e.path) for e in events if e.change == "deleted")
    # Each copy was added when absent: once at first and once after each delete, except after
    # a final delete; every other put of it modified it.
    expected_changes: Counter[tuple[str, str, str]] = Counter()
    for (component, path), n_puts in Counter((r["component"], r["path"]) for r in puts).items():
        added = deletes[component, path] + ((component, path) in state)
        expected_changes["added", path, component] = added
        expected_changes["modified", path, component] = n_puts - added
        expected_changes["deleted", path, component] = deletes[component, path]
    assert +expected_changes == Counter((e.change.value, e.path, e.component_name) for e in events)
    # The versions a write returned are those of its event, and each process saw the versions
    # of a copy increase in the order of its own operations.
    by_content = {(e.component_name, e.path, e.checksum): e for e in put_events}
    position = {e.id: n for n, e in enumerate(events)}
    for log in logs:
        seen: dict[Key, int] = {}
        last_position = -1
        for record in log:
            if "error" in record or record["op"] == "delete":
                continue
            event = by_content[record["component"], record["path"], record["checksum"]]
            if record["op"] == "write":
                assert record["version"] == event.version
            key = (record["component"], record["path"])
            assert event.version > seen.get(key, 0)
            seen[key] = event.version
            assert position[event.id] > last_position
            last_position = position[event.id]
    # There was contention: several processes committed to the same path.
    committers: defaultdict[str, set[int]] = defaultdict(set)
    for n, log in enumerate(logs):
        for record in log:
            if "error" not in record:
                committers[record["path"]].add(n)
    assert any(len(procs) > 1 for procs in committers.values())


@pytest.mark.parametrize(("in_flight", "put"), [("x", "x/y"), ("x/y", "x")])
def test_put_meeting_an_install_in_flight(
    in_flight: str, put: str, env: dict[str, str], root: Path, drive_id: str
) -> None:
    """The race of the "file-and-folder" scenario, frozen: one put is installed, not committed."""
    with SyncDrive(drive_id) as drive:
        drive.exists(".")
        store = DiskStore(root, drive.name)
        meta = {"path": in_flight, "version": 1, "component_name": "default"}
        backup = store.install(store.stage_bytes(b"in flight"), "default", in_flight, meta)
        assert backup is None, "nothing was replaced, so nothing was backed up"
        # The index has neither path: the put may be refused (the other put is about to
        # commit), but as a DriveError, leaving nothing behind.
        with pytest.raises(DriveError):
            drive.write_bytes(put, b"clashing")
        assert list(store.tmp_dir.iterdir()) == []
        assert store.read_meta("default", put) is None


def pause_after_install(drive: Drive) -> tuple[threading.Event, threading.Event]:
    """Make ``drive``'s next puts stop between their install and their commit.

    Returns (installed, go): ``installed`` is set once a put has moved its upload into
    place, and the put goes on to its commit once ``go`` is set. The disk and the server
    are the real ones: only the moment of the commit is chosen.
    """
    assert drive._conn is not None, "connect the drive first"
    store = drive._conn.store
    install = store.install
    installed, go = threading.Event(), threading.Event()

    def paused_install(*args: Any, **kwargs: Any) -> Any:
        backup = install(*args, **kwargs)
        installed.set()
        assert go.wait(30), "the test never let the put go on"
        return backup

    store.install = paused_install  # type: ignore[method-assign]
    return installed, go


@pytest.mark.parametrize("late", ["installed-last", "installed-first"])
async def test_a_put_whose_lock_ran_out_loses_nothing_of_the_put_that_took_it(
    late: str, env: dict[str, str], root: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put that holds the commit lock past its lease (a stalled process, a jump of the
    server's clock) can meet another put of the same copy that took the lock after it.
    The index keeps the one that commits first; the disk must keep the same bytes.

    ``late`` is the put that commits last, and is refused: the one that installed after the
    other (its file is in place: undoing it puts the first one's back), or the one that
    installed first (another file is in place now: it must stay).
    """
    monkeypatch.setattr(asyncdrive._drive, "LOCK_TTL", 0.2)
    async with Drive(drive_id) as first, Drive(drive_id) as second:
        await first.write_bytes("f.bin", b"v1")
        await second.exists("f.bin")
        store = DiskStore(root, first.name)
        conn = await first._connection()
        client, lock = conn.client, conn.index.keys.lock("default", "f.bin")
        first_installed, first_go = pause_after_install(first)
        second_installed, second_go = pause_after_install(second)
        async with anyio.create_task_group() as tg:
            results: dict[str, Any] = {}

            async def put(name: str, drive: Drive, data: bytes) -> None:
                try:
                    results[name] = await drive.write_bytes("f.bin", data)
                except DriveError as exc:
                    results[name] = exc

            tg.start_soon(put, "first", first, b"first")
            assert await anyio.to_thread.run_sync(first_installed.wait, 10)
            with anyio.fail_after(10):  # until the first put's lock has run out
                while await client.exists(lock):
                    await anyio.sleep(0.01)
            tg.start_soon(put, "second", second, b"second")
            assert await anyio.to_thread.run_sync(second_installed.wait, 10)
            # The put that commits first wins; the other finds the version moved on.
            winner, loser = ("first", "second") if late == "installed-last" else ("second", "first")
            (first_go if winner == "first" else second_go).set()
            with anyio.fail_after(10):
                while winner not in results:
                    await anyio.sleep(0.01)
            (second_go if winner == "first" else first_go).set()
        assert isinstance(results[winner], FileInfo), results[winner]
        refused = results[loser]
        assert isinstance(refused, DriveTimeoutError), refused
        assert "lease" in str(refused) and "f.bin" in str(refused)
        assert results[winner].version == 2
        info = await first.info("f.bin")
        assert (info.version, info.checksum) == (2, sha256(winner.encode()))
        assert await second.read_bytes("f.bin") == winner.encode()
        (on_disk,) = store.scan(verify=True)
        assert (on_disk.version, on_disk.checksum) == (2, sha256(winner.encode()))
        assert store.leftovers(grace=0) == ([], [])


# -- new files, put without the commit lock -----------------------------------------------------


@pytest.fixture
def creates_without_lock(request: pytest.FixtureRequest) -> None:
    """Skip on a Cluster: every put takes the lock there (`Drive._create`, the way of a new
    file without it, needs the drive's own pipelined connection, which a Cluster has not)."""
    if request.config.getoption("--server-kind") == "cluster":
        pytest.skip("on a Cluster every put takes the lock")


async def script_calls(redis_url: str) -> int:
    """How many scripts the server has run so far (EVALSHA and EVAL calls)."""
    async with raw_redis(redis_url) as client:
        stats = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


@pytest.mark.usefixtures("creates_without_lock")
async def test_a_new_file_is_put_with_one_script_call(
    make_drive: MakeDrive, drive_id: str, redis_url: str, workdir: Path
) -> None:
    """A new file needs no lock: its put makes one round trip to Redis, its commit; a
    replacement makes two (lock, commit)."""
    drive = make_drive(drive_id)
    await drive.write_bytes("a/first", b"1")
    calls = []
    for path, data in [("a/new", b"2"), ("a/new", b"3"), ("b/first", b"4")]:
        before = await script_calls(redis_url)
        await drive.write_bytes(path, data)
        calls.append(await script_calls(redis_url) - before)
    (workdir / "local.txt").write_bytes(b"5")
    before = await script_calls(redis_url)
    await drive.put("local.txt", to="a/put")
    calls.append(await script_calls(redis_url) - before)
    # Over 1 MiB: checked before its copy, then locked and committed; the small file's
    # way, tried first, found it too big before asking Redis anything.
    (workdir / "big.bin").write_bytes(b"b" * (asyncdrive._drive._SMALL_WRITE + 1))
    before = await script_calls(redis_url)
    await drive.put("big.bin", to="a/big")
    calls.append(await script_calls(redis_url) - before)
    assert calls == [1, 2, 1, 1, 3]
    assert [(await drive.info(p)).version for p in ("a/new", "b/first", "a/put")] == [2, 1, 1]
    assert await drive.read_bytes("a/put") == b"5"


def hold_lock(drive: Drive, path: str) -> Any:
    """Take ``path``'s commit lock as another writer would (a context: released after)."""
    assert drive._conn is not None
    client, key = drive._conn.client, drive._conn.index.keys.lock("default", path)

    @contextlib.asynccontextmanager
    async def held() -> Any:
        assert await client.set(key, "another writer", px=30_000, nx=True)
        try:
            yield
        finally:
            await client.delete(key)

    return held()


async def wait_for_file(path: Path) -> None:
    with anyio.fail_after(10):
        while not path.exists():
            await anyio.sleep(0.005)


async def test_a_lock_request_cut_short_takes_nothing_if_it_comes_after_its_release(
    env: dict[str, str], drive_id: str
) -> None:
    """Where a cancelled lock request and its release go on different connections (a
    Cluster), the request may reach the server second: the release leaves a short-lived
    placeholder, so that the late request finds the lock held, and the path is free again
    after `CUT_SHORT_HOLD`, not after the lock's 30 s lease. A lock it had taken goes, and
    another writer's stays."""
    async with Drive(drive_id) as drive:
        await drive.write_bytes("first", b"connects")
        assert drive._conn is not None
        index, client = drive._conn.index, drive._conn.client
        key = index.keys.lock("default", "a/f")
        await index.release_cut_short("default", [("a/f", "t1")])  # came first
        assert not await client.set(key, "t1", nx=True, px=30_000)  # the late request
        assert 0 < await client.pttl(key) <= asyncdrive._index.CUT_SHORT_HOLD * 1000
        info = await drive.write_bytes("a/f", b"waits for the placeholder only")
        assert info.version == 1 and not await client.exists(key)
        assert await client.set(key, "t2", nx=True, px=30_000)  # a request that came first
        await index.release_cut_short("default", [("a/f", "t2")])
        assert not await client.exists(key)
        async with hold_lock(drive, "a/f"):
            await index.release_cut_short("default", [("a/f", "t3")])
            assert await client.get(key) in ("another writer", b"another writer")
        # A request cancelled before it was sent: on the drive's own connection the release
        # follows it (no placeholder needed); on a Cluster, redis-py's, with one.
        with pytest.raises(asyncio.CancelledError):
            async with index._released_if_cut_short("default", [("a/f", "t4")]):
                raise asyncio.CancelledError
        assert bool(await client.exists(key)) is (index.wire is None)


@pytest.mark.usefixtures("creates_without_lock")
async def test_a_new_file_meeting_another_writers_lock_waits_and_installs_again(
    env: dict[str, str], root: Path, drive_id: str
) -> None:
    """The put finds no file on disk and moves its upload in, but another writer holds the
    path's lock: its commit is refused, and it takes the lock the usual way, then stores
    the bytes again over its own uncommitted file."""
    async with Drive(drive_id) as drive:
        await drive.write_bytes("a/first", b"1")
        store = DiskStore(root, drive.name)
        target = store.base / "default" / "a" / "new"
        result: list[FileInfo] = []
        async with anyio.create_task_group() as tg, hold_lock(drive, "a/new"):

            async def put() -> None:
                result.append(await drive.write_bytes("a/new", b"mine"))

            tg.start_soon(put)
            await wait_for_file(target)  # installed, not committed: it waits for the lock
            assert not await drive.exists("a/new") and result == []
        (info,) = result
        assert (info.version, info.checksum) == (1, sha256(b"mine"))
        assert await drive.read_bytes("a/new") == b"mine"
        assert store.read_meta("default", "a/new") == {
            "size": 4, "mtime": info.mtime, "checksum": sha256(b"mine"), "version": 1
        }  # fmt: skip
        assert sorted(p.name for p in target.parent.iterdir()) == ["first", "new"]
        assert store.leftovers(grace=0) == ([], [])


@pytest.mark.usefixtures("creates_without_lock")
async def test_a_new_file_put_cancelled_while_waiting_for_the_lock_leaves_nothing(
    env: dict[str, str], root: Path, drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        await drive.write_bytes("a/first", b"1")
        store = DiskStore(root, drive.name)
        target = store.base / "default" / "a" / "new"
        async with anyio.create_task_group() as tg, hold_lock(drive, "a/new"):
            tg.start_soon(drive.write_bytes, "a/new", b"mine")
            await wait_for_file(target)
            tg.cancel_scope.cancel()
        assert not target.exists() and not await drive.exists("a/new")
        assert store.leftovers(grace=0) == ([], [])
        assert (await drive.write_bytes("a/new", b"later")).version == 1


@pytest.mark.usefixtures("creates_without_lock")
async def test_a_path_created_again_after_a_delete_gets_its_next_version(
    env: dict[str, str], drive_id: str, root: Path, redis_url: str
) -> None:
    """Without the lock, a new file is written to disk as the version after the last one
    its drive deleted (or as version 1): one script call. Where that guess is wrong (another
    drive deleted it), the commit is refused and the file stored again under the lock."""
    async with Drive(drive_id) as drive, Drive(drive_id) as other:
        store = DiskStore(root, drive.name)
        await drive.write_bytes("a/first", b"1")
        assert (await drive.write_bytes("a/f", b"one")).version == 1
        await drive.delete("a/f")
        before = await script_calls(redis_url)
        info = await drive.write_bytes("a/f", b"two")
        assert await script_calls(redis_url) - before == 1  # no lock, no second try
        assert info.version == 2 and store.installed_version("default", "a/f") == 2
        await drive.delete("a/f")
        await other.write_bytes("a/f", b"three")  # this drive does not know of these
        await other.delete("a/f")
        before = await script_calls(redis_url)
        info = await drive.write_bytes("a/f", b"four")
        assert await script_calls(redis_url) - before == 3  # refused, then lock and commit
        assert info.version == 4 and store.installed_version("default", "a/f") == 4
        assert await other.read_bytes("a/f") == b"four"
        await drive.delete("a", recursive=True)  # a recursive delete remembers its versions
        before = await script_calls(redis_url)
        assert (await drive.write_bytes("a/f", b"five")).version == 5
        assert await script_calls(redis_url) - before == 1
        assert (await drive.write_bytes("a/first", b"again")).version == 2
        assert store.installed_version("default", "a/f") == 5
        assert store.leftovers(grace=0) == ([], [])


def test_a_drive_remembers_the_versions_of_its_latest_puts_and_deletes_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncdrive._drive, "_REMEMBERED_PATHS", 3)
    drive = Drive("lit://never-connected")
    for number, path in enumerate(["a", "b", "c", "a", "d"]):
        drive._remember("default", path, -number)
    assert drive._last_versions == {("default", "c"): -2, ("default", "a"): -3,
                                    ("default", "d"): -4}  # fmt: skip


@pytest.mark.usefixtures("creates_without_lock")
async def test_a_drive_replacing_its_own_file_goes_the_locked_way_at_once(
    env: dict[str, str], drive_id: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker-thread call to find the file it put itself still there; a file another
    drive put is looked for once, then replaced the locked way too."""
    tried: list[str] = []
    install_new = DiskStore.install_new

    def counted(
        self: DiskStore, staged: Any, component: str, path: str, meta: Any, **kwargs: Any
    ) -> Any:
        tried.append(path)
        return install_new(self, staged, component, path, meta, **kwargs)

    monkeypatch.setattr(DiskStore, "install_new", counted)
    async with Drive(drive_id) as drive, Drive(drive_id) as other:
        for data in (b"1", b"2", b"3"):
            await drive.write_bytes("a/mine", data)
        await other.write_bytes("a/theirs", b"1")
        before = await script_calls(redis_url)
        info = await drive.write_bytes("a/theirs", b"2")
        assert await script_calls(redis_url) - before == 2  # lock, commit: no refused try
        assert tried == ["a/mine", "a/theirs", "a/theirs"]
        assert info.version == 2 and (await drive.info("a/mine")).version == 3
        assert await other.read_bytes("a/mine") == b"3"


@pytest.mark.parametrize("how", ["write_bytes", "put"])
async def test_a_new_file_refused_by_the_index_leaves_nothing_on_disk(
    how: str, make_drive: MakeDrive, drive_id: str, root: Path, workdir: Path
) -> None:
    """Another component owns the path: the put, installed without the lock, is undone."""
    owner = make_drive(drive_id, component_name="owner", allow_duplicates=False)
    other = make_drive(drive_id, component_name="other", allow_duplicates=False)
    await owner.write_bytes("a/f", b"owner's")
    await other.write_bytes("a/mine", b"other's")  # the folder exists in other's copy
    (workdir / "f").write_bytes(b"other's f")
    with pytest.raises(DriveFileExistsError, match="owned by component 'owner'"):
        if how == "put":
            await other.put("f", to="a/f")
        else:
            await other.write_bytes("a/f", b"other's f")
    store = DiskStore(root, other.name)
    assert sorted(p.name for p in (store.base / "other" / "a").iterdir()) == ["mine"]
    assert store.leftovers(grace=0) == ([], [])
    assert await owner.read_bytes("a/f") == b"owner's"


# -- conditional writes: a counter incremented by many processes -------------------------------

COUNTERS = 4
INCREMENTS = 25
MAX_ATTEMPTS = 3000


async def counter(drive_id: str, seed: int) -> None:
    """Increment the number in ``counter`` with if_version=, retrying conflicts; log each."""
    face = "async" if seed % 2 else "sync"
    drive = open_drive(drive_id, face)
    try:
        await drive.exists(".")
        await wait_until_go()
        successes = 0
        for attempt in range(MAX_ATTEMPTS):
            if successes == INCREMENTS:
                break
            version = (await drive.info("counter")).version
            value = int(await drive.read_bytes("counter"))
            data = str(value + 1).encode()
            try:
                if attempt % 2:
                    Path("counter").write_bytes(data)
                    await drive.put("counter", if_version=version)
                    new_version = None
                else:
                    new_version = (
                        await drive.write_bytes("counter", data, if_version=version)
                    ).version
            except VersionConflictError as exc:
                # Someone replaced the version read: the file has moved on, never back.
                assert exc.current_version > version
                print(json.dumps({"conflict": version, "current": exc.current_version}))
                continue
            successes += 1
            print(json.dumps({"value": value + 1, "read": version, "version": new_version}))
    finally:
        await drive.aclose()


def test_conditional_writes_lose_no_update(
    env: dict[str, str], root: Path, workdir: Path, drive_id: str
) -> None:
    with SyncDrive(drive_id) as drive:
        assert drive.write_bytes("counter", b"0").version == 1
        argvs = [["counter", drive_id, str(seed)] for seed in range(COUNTERS)]
        with workers(__name__, argvs, env=env, cwd=workdir) as procs:
            release(procs)
            logs = results(procs, timeout=120)
        wins = [r for log in logs for r in log if "value" in r]
        assert [len([r for r in log if "value" in r]) for log in logs] == [INCREMENTS] * COUNTERS
        total = COUNTERS * INCREMENTS
        # No lost update: every increment left its own value, and the last one is the total.
        assert sorted(r["value"] for r in wins) == list(range(1, total + 1))
        assert drive.read_bytes("counter") == str(total).encode()
        info = drive.info("counter")
        assert info.version == total + 1
        # A write that won replaced exactly the version it read.
        for r in wins:
            assert r["read"] == r["value"]
            assert r["version"] in (None, r["value"] + 1)
        events = change_log(drive)
        state = index_state(drive, ["default", END_COMPONENT])
        check_disk(drive, root, state)
    assert [e.checksum for e in events] == [sha256(str(n).encode()) for n in range(total + 1)]
    assert [e.version for e in events] == list(range(1, total + 2))


# -- the workers' entry point -------------------------------------------------------------------


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "writer":
        drive_id, component, allow, seed, paths = args
        anyio.run(writer, drive_id, component, allow == "1", int(seed), json.loads(paths))
    elif role == "counter":
        drive_id, seed = args
        anyio.run(counter, drive_id, int(seed))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])


@pytest.mark.parametrize("disk", ["local", "network"])
async def test_concurrent_gets_cancelled_at_random_leave_whole_files_or_none(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch, disk: str
) -> None:
    """Gets of small files share worker-thread calls on a local disk, and have one each on
    a network filesystem: cancelled at random points, each leaves its local file complete
    or absent, never a part or a temporary file, the others are unaffected, and the shared
    calls end idle."""
    if disk == "network":
        monkeypatch.setattr(asyncdrive._storage, "filesystem_type", lambda path: "nfs4")
    rng = random.Random(7)
    contents = {f"f/{i}.bin": os.urandom(rng.randrange(1, 64 * 1024)) for i in range(60)}
    async with Drive(drive_id) as drive:
        for path, data in contents.items():
            await drive.write_bytes(path, data)
        await drive.get("f/0.bin", to=workdir / "first")  # looks at the disk's kind
        for round_number in range(5):
            dest = workdir / f"out{round_number}"
            finished: dict[str, bool] = {}

            async def get(
                path: str, delay: float, dest: Path = dest, finished: dict[str, bool] = finished
            ) -> None:
                with anyio.move_on_after(delay):
                    await drive.get(path, to=dest / path)
                    finished[path] = True

            async with anyio.create_task_group() as tg:
                for path in contents:
                    tg.start_soon(get, path, rng.choice([0, 0.0005, 0.002, 0.01, 10]))
            got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*")
                   if p.is_file()}  # fmt: skip
            assert set(got) <= set(contents)  # no temporary file left
            assert all(got[path] == contents[path] for path in got)  # whole, or absent
            assert set(finished) <= set(got)  # every get that returned left its file
            assert 0 < len(finished) < len(contents), len(finished)  # some were cancelled
            conn = drive._conn
            assert conn is not None
            assert repr(conn.small_copies) == "<CallBatcher idle, 0 waiting>"


@pytest.mark.parametrize("disk", ["local", "network"])
async def test_concurrent_new_files_cancelled_at_random_are_committed_or_leave_nothing(
    env: dict[str, str],
    workdir: Path,
    root: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
    disk: str,
) -> None:
    """New small files put by concurrent tasks share worker-thread calls: cancelled at
    random points, each put is committed whole or leaves nothing behind (a put cancelled
    after its install may still commit), and the shared calls end idle."""
    if disk == "network":  # each put in a call of its own
        monkeypatch.setattr(asyncdrive._storage, "filesystem_type", lambda path: "nfs4")
    rng = random.Random(11)
    for i in range(60):
        (workdir / f"{i}.bin").write_bytes(f"file {i}".encode() * rng.randrange(1, 500))
    async with Drive(drive_id) as drive:
        await drive.write_bytes("first.txt", b"looks at the disk's kind")
        for round_number in range(4):
            folder = f"r{round_number}"
            paths = [f"{folder}/{i % 3}/{i}.bin" for i in range(60)]
            # asyncio's own cancellation (anyio's scopes do not reach into a new file's
            # install and commit, which are shielded).
            tasks = [
                asyncio.ensure_future(drive.put(workdir / f"{i}.bin", to=path))
                for i, path in enumerate(paths)
            ]
            for _ in range(3):
                await asyncio.sleep(rng.choice([0, 0.0005, 0.002]))
                for task in rng.sample(tasks, 10):
                    task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes)
            returned = {path for path, o in zip(paths, outcomes, strict=True) if o is None}
            listed = set(await drive.list(folder, recursive=True))
            assert returned <= listed and 0 < len(returned) < 60, len(returned)
            for path in listed:  # committed: whole
                i = int(path.rpartition("/")[2].removesuffix(".bin"))
                assert await drive.read_bytes(path) == (workdir / f"{i}.bin").read_bytes()
            conn = drive._conn
            assert conn is not None
            assert repr(conn.small_creates) == "<CallBatcher idle, 0 waiting>"
        # Nothing on disk that the index does not know (a cancelled put's file is removed
        # by the put, or left for gc() if its commit may have run: none here).
        store = DiskStore(root, drive.name)
        on_disk = {
            p.relative_to(store.base / "default").as_posix()
            for p in (store.base / "default").rglob("*.bin")
        }
        assert on_disk == set(await drive.list(".", recursive=True)) - {"first.txt"}
        assert store.leftovers(grace=0) == ([], [])


async def test_replacements_and_deletes_cancelled_at_random_are_done_whole_or_not_at_all(
    env: dict[str, str], root: Path, drive_id: str, redis_url: str
) -> None:
    """Puts that replace a file (under its commit lock), deletes of one file and of a whole
    folder, cancelled at random points by asyncio's own cancellation (``task.cancel()``, as
    ``asyncio.timeout`` and task groups do, which anyio's shields do not stop): each is done
    whole or not at all, and none leaves a lock, a backup, or bytes the index does not know."""
    rng = random.Random(13)
    old = {f"p/{i}.bin": f"old {i} ".encode() * rng.randrange(1, 400) for i in range(45)}
    new = {path: data.replace(b"old", b"new") for path, data in old.items()}
    folder = {f"q/{i}.bin": f"folder {i}".encode() for i in range(20)}
    async with Drive(drive_id) as drive:
        for round_number in range(4):
            for path, data in {**old, **folder}.items():
                await drive.write_bytes(path, data)
            work: list[Any] = [
                drive.delete(path) if i % 3 == 0 else drive.write_bytes(path, new[path])
                for i, path in enumerate(old)
            ]
            work.append(drive.delete("q", recursive=True))
            tasks = [asyncio.ensure_future(w) for w in work]
            for _ in range(3):
                await asyncio.sleep(rng.choice([0, 0.0005, 0.002, 0.005]))
                for task in rng.sample(tasks, 12):
                    task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(not isinstance(o, BaseException) or isinstance(o, asyncio.CancelledError)
                       for o in outcomes), outcomes  # fmt: skip
            done = [not isinstance(o, BaseException) for o in outcomes]
            assert 0 < sum(done) < len(tasks), round_number  # some cancelled, some not
            listed = set(await drive.list(".", recursive=True))
            for i, path in enumerate(old):
                if done[i]:  # returned: done
                    assert (path in listed) == (i % 3 != 0)
                if path in listed:  # whole: the old bytes or the new, as the index says
                    data = await drive.read_bytes(path)
                    assert data in (old[path], new[path])
                    info = await drive.info(path)
                    assert info.checksum == hashlib.sha256(data).hexdigest()
                    meta = DiskStore(root, drive.name).read_meta("default", path) or {}
                    assert meta.get("version") == info.version  # the disk says the same
            kept = listed & set(folder)
            if done[-1]:
                assert kept == set()
            for path in kept:
                assert await drive.read_bytes(path) == folder[path]
            # The disk agrees with the index; no backup, no upload, no lock is left.
            store = DiskStore(root, drive.name)
            base = store.base / "default"
            on_disk = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
            assert on_disk == listed, on_disk ^ listed
            assert store.leftovers(grace=0) == ([], [])
            async with raw_redis(redis_url) as client:
                locks = [key async for key in client.scan_iter(match="*lock:*")]
                held: list[Any] = [await client.get(key) for key in locks]
            # (On a Cluster, a lock request cut short leaves a placeholder for a second,
            # `release_cut_short`, so that the request, if it comes after, takes nothing.)
            assert [h for h in held if h and not h.startswith("cut-short:")] == [], locks
            for path in listed:
                await drive.delete(path)


async def test_two_folder_puts_of_one_folder_never_wait_for_each_other(
    drive_id: str, root: Path, redis_url: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder put whose batch finds a path locked never waits for it holding the others:
    the writer holding that path may be waiting for one of them (two puts of one folder at
    once), which only the 30 s lease would end."""
    for i in range(10):
        local = workdir / "src" / f"f{i}"
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(f"file {i}".encode())
    batch_locked = asyncio.Event()
    lock_put_many = asyncdrive._index.Index.lock_put_many

    async def locked_then_tell(self: asyncdrive._index.Index, *args: Any, **kwargs: Any) -> Any:
        asked = await lock_put_many(self, *args, **kwargs)
        batch_locked.set()
        return asked

    monkeypatch.setattr(asyncdrive._index.Index, "lock_put_many", locked_then_tell)
    async with (
        Drive(drive_id, root=root, redis_url=redis_url) as folder_put,
        Drive(drive_id, root=root, redis_url=redis_url) as other,
    ):
        index = (await other._connection()).index
        # The other writer holds dst/f7, and will need dst/f2 (in the batch) before it
        # lets go of it: as another put of the same folder, in the other order.
        held, outcome = await index.lock_put("default", "dst/f7", False, "", ttl=30, timeout=5)
        assert outcome.status == "ok"

        async def other_writer() -> None:
            await batch_locked.wait()
            # Given at once, once the batch is committed: waiting for the lease would time
            # out here (a deadlock ended by the lease alone, 30 s later).
            needed, got = await index.lock_put("default", "dst/f2", False, "", ttl=30, timeout=10)
            assert got.status == "ok"
            await index.unlock("default", "dst/f2", needed)
            await index.unlock("default", "dst/f7", held)

        await asyncio.gather(folder_put.put("src", to="dst"), other_writer())
        assert await folder_put.list("dst") == [f"dst/f{i}" for i in range(10)]
        assert await folder_put.read_bytes("dst/f7") == b"file 7"


@pytest.mark.usefixtures("creates_without_lock")
async def test_a_new_file_put_cancelled_at_its_refused_commit_leaves_no_file(
    drive_id: str, root: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new small file is installed without the lock, then its commit finds another writer
    holding the path's lock: the put would go on the locked way and replace the file; its
    caller cancelled meanwhile, the file it installed is removed (it was left, unindexed)."""
    async with Drive(drive_id, root=root, redis_url=redis_url) as drive:
        await drive.write_bytes("first.txt", b"x")  # connected, the disk's ways known
        index = (await drive._connection()).index
        token, outcome = await index.lock_put("default", "new.txt", False, "", ttl=30, timeout=5)
        assert outcome.status == "ok"  # another writer's lock on the path
        entered, answer = hold_commits(monkeypatch)
        put = asyncio.create_task(drive.write_bytes("new.txt", b"new"))
        await entered.wait()
        put.cancel()
        await asyncio.sleep(0.01)
        answer.set()  # refused: "locked"
        with pytest.raises(asyncio.CancelledError):
            await put
        monkeypatch.undo()
        await index.unlock("default", "new.txt", token)
        assert not (root / "drives" / drive.name / "default" / "new.txt").exists()
        report = await drive.gc(grace=0)
        assert report.orphans_removed == 0
        assert await drive.list(".") == ["first.txt"]


async def test_many_waiting_gets_and_misses_share_the_drives_connections(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """A get waiting for its file took a connection of its own (its watch's), and a miss
    one of redis-py's pool, which refuses a 101st: 300 of each at once failed ("Too many
    connections"), or ran the process out of file descriptors under a low limit. (On a
    Cluster, redis-py's client takes a connection a command: a few run at once, each node
    pool keeping those it opened.)"""

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    count = 300
    async with Drive(drive_id) as reader, Drive(drive_id, component_name="w") as writer:
        await writer.write_bytes("warm", b"x")
        assert await reader.exists("warm")
        before = open_files()
        assert (
            await asyncio.gather(*(reader.exists(f"no/{i}") for i in range(count)))
            == [False] * count
        )
        gets = [
            asyncio.create_task(reader.get(f"in/{i}", to=f"out/{i}", timeout=60))
            for i in range(count)
        ]
        room = reader._conn.waiting_room if reader._conn else None
        while room is None or "300 waiting" not in repr(room):
            await asyncio.sleep(0.01)
            room = reader._conn.waiting_room if reader._conn else None
        assert reader._conn is not None
        pooled = 0 if reader._conn.index.wire else asyncdrive._client.CLUSTER_COMMANDS_AT_ONCE
        assert open_files() - before < 10 + pooled  # one watch for them all (was one each)
        await asyncio.gather(*(writer.write_bytes(f"in/{i}", b"%d" % i) for i in range(count)))
        await asyncio.wait_for(asyncio.gather(*gets), 60)
        assert all((workdir / "out" / str(i)).read_bytes() == b"%d" % i for i in range(count))
        assert repr(room).endswith(" 0 waiting>")


@pytest.mark.parametrize("when", ["reading", "reader not started yet"])
async def test_waiting_gets_end_with_their_drive(
    env: dict[str, str], workdir: Path, drive_id: str, when: str
) -> None:
    drive = Drive(drive_id)
    await drive.write_bytes("warm", b"x")
    gets = [asyncio.create_task(drive.get(f"in/{i}", timeout=60)) for i in range(3)]
    if when == "reading":
        while drive._conn is None or "3 waiting" not in repr(drive._conn.waiting_room):
            await asyncio.sleep(0.01)
    else:  # the room's reader made, not yet run: cancelled, it ran none of its code
        while drive._conn is None or getattr(drive._conn.waiting_room, "_reader", None) is None:
            await asyncio.sleep(0)
    await drive.aclose()
    for get in gets:  # (not each one's whole timeout, then DriveTimeoutError)
        with pytest.raises(DriveClosedError, match=r"before its get of 'in/\d' finished"):
            await asyncio.wait_for(get, 10)


@pytest.mark.parametrize("call", ["put", "get"])
async def test_a_cancelled_large_copy_stops_at_its_next_step(
    env: dict[str, str], drive_id: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A cancelled put or get of a large file waited for its copy to run to its end in its
    disk thread (minutes on a slow disk): it stops at its next 8 MiB step, and leaves
    nothing of itself (no stored file, the local file untouched, no temporary file). The
    copy's steps are held here, one at a time, as a slow disk would."""
    data = os.urandom(64 << 20)
    (workdir / "big.bin").write_bytes(data)
    async with Drive(drive_id) as drive:
        if call == "get":
            await drive.put("big.bin")
            (workdir / "big.bin").write_bytes(b"mine")
        steps: list[str] = []
        first_step = threading.Event()
        real_step = asyncdrive._storage._FdCopier.step

        def stop_requested() -> bool:
            stop = asyncdrive._threads.stop_request.get()
            return stop is not None and stop.requested

        def held_step(copier: Any, *args: Any) -> int:
            steps.append("cancelled" if stop_requested() else "before")
            copied = real_step(copier, *args)
            first_step.set()
            # Held until the cancellation reaches the call (the loop may be slow to deliver
            # it), for a while at most: without it, every step is "before".
            deadline = time.monotonic() + 2
            while not stop_requested() and time.monotonic() < deadline:
                time.sleep(0.001)
            return copied

        monkeypatch.setattr(asyncdrive._storage._FdCopier, "step", held_step)
        if call == "get":
            task = asyncio.create_task(drive.get("big.bin", overwrite=True))
        else:
            task = asyncio.create_task(drive.put("big.bin"))
        assert await anyio.to_thread.run_sync(first_step.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        assert steps.count("before") == 1 and steps.count("cancelled") <= 1, steps
        assert await drive.list(".") == (["big.bin"] if call == "get" else [])
        if call == "get":
            assert (await drive.read_bytes("big.bin")) == data
            assert (workdir / "big.bin").read_bytes() == b"mine"
        assert sorted(os.listdir(workdir)) == ["big.bin"]
        assert (await drive.gc(grace=0)).orphans_removed == 0


@pytest.mark.parametrize("unnamed", [True, False])
async def test_a_large_put_cancelled_after_its_last_copy_step_leaves_no_upload(
    env: dict[str, str],
    drive_id: str,
    workdir: Path,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    unnamed: bool,
) -> None:
    """Cancelled as its disk thread finished the upload (its fsync, the wait for the hash:
    seconds on a network disk), the put dropped the upload the thread returned: open for
    as long as the exception lived, or (no O_TMPFILE, as on NFS) named in .tmp until gc."""
    if unnamed and not asyncdrive._storage._CAN_TMPFILE:
        pytest.skip("this filesystem makes no unnamed files")
    monkeypatch.setattr(asyncdrive._storage, "_CAN_TMPFILE", unnamed)
    (workdir / "big.bin").write_bytes(os.urandom(16 << 20))
    copied, cancelled = threading.Event(), threading.Event()
    real_copy = asyncdrive._storage._copy_hashed

    def copy_then_wait(*args: Any, **kwargs: Any) -> tuple[int, str]:
        outcome = real_copy(*args, **kwargs)
        copied.set()
        cancelled.wait(10)  # the last step done, the caller cancelled meanwhile
        return outcome

    monkeypatch.setattr(asyncdrive._storage, "_copy_hashed", copy_then_wait)

    def open_below_root() -> list[str]:
        names = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
        return [name for name in names if name.startswith(str(root / "drives"))]

    async with Drive(drive_id) as drive:
        await drive.write_bytes("warm.txt", b"x")
        put = asyncio.create_task(drive.put("big.bin"))
        assert await anyio.to_thread.run_sync(copied.wait, 10)
        put.cancel()
        cancelled.set()
        with pytest.raises(asyncio.CancelledError) as caught:
            await put
        monkeypatch.undo()
        assert open_below_root() == [], caught.value  # (the error still alive)
        uploads = root / "drives" / drive.name / ".tmp"
        assert not uploads.exists() or os.listdir(uploads) == []
        assert await drive.list(".") == ["warm.txt"]
        report = await drive.gc(grace=0)
        assert (report.uploads_removed, report.orphans_removed) == (0, 0)


async def _lock_and_start_its_release(drive: Drive) -> tuple[str, asyncio.Task[None]]:
    """Take a.txt's lock, and start its release in a task, not yet sent (it connects again,
    as after another call's cancelled read; on a Cluster, redis-py's client has steps of
    its own before it sends): return the lock's key and the task."""
    await drive.write_bytes("a.txt", b"x")
    conn = await drive._connection()
    token, outcome = await conn.index.lock_put("default", "a.txt", False, "", ttl=30, timeout=5)
    assert outcome.status == "ok"
    if conn.index.wire is not None:
        conn.index.wire.disconnect("as after a cancelled read")
    release = asyncio.get_running_loop().create_task(conn.index.unlock("default", "a.txt", token))
    await asyncio.sleep(0)
    return conn.index.keys.lock("default", "a.txt"), release


def test_locks_whose_release_asyncio_run_cut_short_are_released_as_it_ends(
    drive_id: str, env: dict[str, str], redis_url: str
) -> None:
    """Tasks left running as asyncio.run() ends are cancelled by it, the work a put finishes
    whatever cancels its caller too: a release of a lock cut short there left the lock for
    its lease (30 s), every writer of the path waiting for it in the next run."""
    drive = Drive(drive_id)

    async def main() -> str:
        lock_key, _ = await _lock_and_start_its_release(drive)  # (a task nobody awaits)
        return lock_key

    lock_key = asyncio.run(main())

    async def after() -> None:
        async with raw_redis(redis_url) as client:
            assert await client.exists(lock_key) == 0
        await drive.write_bytes("a.txt", b"next")
        await drive.aclose()

    asyncio.run(after())


async def test_a_drive_closed_after_a_release_was_cut_short_releases_the_lock(
    drive_id: str, env: dict[str, str], redis_url: str
) -> None:
    drive = Drive(drive_id)
    lock_key, release = await _lock_and_start_its_release(drive)
    release.cancel()
    with pytest.raises(asyncio.CancelledError):
        await release
    await drive.aclose()
    async with raw_redis(redis_url) as client:
        assert await client.exists(lock_key) == 0


async def test_a_drive_closed_in_a_cancelled_scope_still_releases_and_closes(
    drive_id: str, env: dict[str, str], redis_url: str
) -> None:
    """With a release cut short pending, a close inside a cancelled anyio scope (an
    `async with Drive()` in an expired move_on_after) raised before it closed anything:
    the lock, the connections and the disk threads' share were kept."""
    drive = Drive(drive_id)
    lock_key, release = await _lock_and_start_its_release(drive)
    release.cancel()
    with pytest.raises(asyncio.CancelledError):
        await release
    conn = drive._conn
    assert conn is not None and conn.index.unreleased
    with anyio.CancelScope() as scope:
        scope.cancel()
        await drive.aclose()
    assert conn.closed and conn.loop_end is None and conn.index.unreleased == []
    if conn.connected.wire is not None:
        assert repr(conn.connected.wire).endswith("closed>")
    async with raw_redis(redis_url) as client:
        assert await client.exists(lock_key) == 0

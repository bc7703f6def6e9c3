"""Watching a drive: order, completeness, resuming, expiry, groups, early exit."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.exceptions

import asyncdrive._client
from asyncdrive import (
    Change,
    CursorExpiredError,
    Drive,
    DriveClosedError,
    DriveError,
    DriveEvent,
    DriveTypeError,
    DriveUnavailableError,
    GroupInUseError,
    InvalidConfigError,
    SyncDrive,
    _index,
    _watch,
)
from asyncdrive import _drive as drive_module
from asyncdrive._events import steady_now

from .conftest import MakeDrive, raw_redis, run_python
from .procs import read_line, spawn
from .servers import ServerProcess, blocked_xreads


async def collect(watch: Any, n: int) -> list[DriveEvent]:
    events: list[DriveEvent] = []
    async for event in watch:
        events.append(event)
        if len(events) == n:
            break
    return events


async def test_events_of_each_change(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id, component_name="w1")
    watch = drive.watch()
    await drive.write_bytes("a/b.txt", b"1")
    await drive.write_bytes("a/b.txt", b"22")
    await drive.delete("a/b.txt")
    events = await collect(watch, 3)
    assert [(e.change, e.path, e.version, e.size) for e in events] == [
        (Change.ADDED, "a/b.txt", 1, 1),
        (Change.MODIFIED, "a/b.txt", 2, 2),
        (Change.DELETED, "a/b.txt", 2, 2),
    ]
    first = events[0]
    assert first.drive == drive_id[6:]
    assert first.component_name == "w1"
    assert first.change == "added"  # a str enum
    assert len(first.checksum) == 64
    assert abs(first.timestamp - events[2].timestamp) < 60
    assert pickle.loads(pickle.dumps(first)) == first
    assert watch.cursor == events[-1].id
    assert first.deliveries == 1  # (outside groups)
    # Handed out again, the same event: equal, and one in a set (deliveries not compared).
    again = dataclasses.replace(first, deliveries=2)
    assert again == first and len({first, again}) == 1
    assert pickle.loads(pickle.dumps(again)).deliveries == 2


def test_an_event_pickled_before_deliveries_loads() -> None:
    """Pickled by asyncdrive 0.1.0 before `DriveEvent.deliveries` (a worker of the last
    version sharing a queue): 1 delivery, not a broken object."""
    old = (
        b"\x80\x04\x95k\x00\x00\x00\x00\x00\x00\x00\x8c\x12asyncdrive._events\x94\x8c\n"
        b"DriveEvent\x94\x93\x94)\x81\x94]\x94(\x8c\x031-0\x94h\x00\x8c\x06Change\x94\x93"
        b"\x94\x8c\x05added\x94\x85\x94R\x94\x8c\x01d\x94\x8c\x01p\x94\x8c\x01c\x94K\x01K"
        b"\x01\x8c\x01x\x94G?\xf0\x00\x00\x00\x00\x00\x00K\x01eb."
    )
    event = pickle.loads(old)
    assert (event.id, event.path, event.timestamp, event.deliveries) == ("1-0", "p", 1.0, 1)
    assert event == DriveEvent("1-0", Change.ADDED, "d", "p", "c", 1, 1, "x", 1.0)


async def test_start_is_fixed_when_watch_is_called(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    other = make_drive(drive_id, component_name="other")
    watch = drive.watch()  # nothing awaited yet
    await other.write_bytes("before-iteration.txt", b"x")
    assert await drive.list(".") == ["before-iteration.txt"]
    events = await collect(watch, 1)
    assert events[0].path == "before-iteration.txt"


async def test_no_events_for_failed_operations(make_drive: MakeDrive, drive_id: str) -> None:
    w1 = make_drive(drive_id, component_name="w1")
    w2 = make_drive(drive_id, component_name="w2")
    watch = w1.watch(timeout=0.5)
    await w1.write_bytes("x", b"1")
    with pytest.raises(DriveError):
        await w2.write_bytes("x", b"2")
    with pytest.raises(DriveError):
        await w2.delete("x")
    with pytest.raises(DriveError):
        await w1.write_bytes("x/y", b"3")
    assert [(e.change, e.component_name) async for e in watch] == [(Change.ADDED, "w1")]


async def test_path_filters(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    deep = drive.watch("ckpt", timeout=0.5)
    flat = drive.watch("ckpt", recursive=False, timeout=0.5)
    for path in ("ckpt/1.pt", "ckpt/sub/2.pt", "other/3.pt", "ckpt.txt", "ckpt/4.pt"):
        await drive.write_bytes(path, b"x")
    assert [e.path async for e in deep] == ["ckpt/1.pt", "ckpt/sub/2.pt", "ckpt/4.pt"]
    assert [e.path async for e in flat] == ["ckpt/1.pt", "ckpt/4.pt"]
    # A file's own path, not recursive: that file's events.
    one = drive.watch("ckpt/1.pt", recursive=False, timeout=0.5)
    await drive.write_bytes("ckpt/1.pt", b"y")
    await drive.write_bytes("ckpt/1.pt.bak", b"y")
    assert [(e.path, e.version) async for e in one] == [("ckpt/1.pt", 2)]


async def test_timeout_ends_iteration(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    async with drive.watch(timeout=0.2) as events:
        assert [e async for e in events] == []


async def test_more_watches_waiting_than_commands_at_once_leave_the_calls_running(
    env: dict[str, str], drive_id: str, redis_url: str
) -> None:
    """Watches waiting in their blocking reads take none of the turns a drive's commands
    take on a Cluster (`CLUSTER_COMMANDS_AT_ONCE` at once): with more of them waiting than
    that, a put still runs, and each watch sees it."""
    async with Drive(drive_id) as drive:
        await _watches_see_a_put(drive, redis_url)


async def _watches_see_a_put(drive: Drive, redis_url: str) -> None:
    assert not await drive.exists("a.txt")  # (connected)
    count = asyncdrive._client.CLUSTER_COMMANDS_AT_ONCE + 2
    before = blocked_xreads(redis_url)
    watches = [drive.watch(timeout=60) for _ in range(count)]
    try:
        nexts = [asyncio.create_task(watch.next(timeout=30)) for watch in watches]
        assert drive._conn is not None
        # Each waits in the server on a Cluster (elsewhere, watches may share a connection).
        waiting = 1 if drive._conn.index.wire else count
        with anyio.fail_after(20):
            while len(blocked_xreads(redis_url) - before) < waiting:
                await asyncio.sleep(0.01)
            await drive.write_bytes("a.txt", b"x")
            events = await asyncio.gather(*nexts)
        assert [event and event.path for event in events] == ["a.txt"] * count
    finally:
        for watch in watches:
            await watch.aclose()


async def test_a_closed_watch_is_not_entered_again(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """A watch ended (by its timeout, or closed) and entered again yielded nothing, as if no
    change came: it says it is closed, and how to go on where it ended."""
    async with Drive(drive_id) as drive:
        events = drive.watch("ckpt", timeout=0.5)
        async with events:
            await drive.write_bytes("ckpt/1.pt", b"x")
            assert [e.path async for e in events] == ["ckpt/1.pt"]  # ended by its timeout
        with pytest.raises(DriveClosedError) as caught:
            async with events:
                pass
        message = str(caught.value)
        assert message.startswith(f"{events!r} is closed") and "[closed]" in message
        assert f"drive.watch('ckpt', since={events.cursor!r})" in message
        group = drive.watch(group="evaluators", recursive=False, member="e1")
        await group.aclose()
        again = r"drive.watch\('.', recursive=False, group='evaluators', member='e1'\)"
        with pytest.raises(DriveClosedError, match=again):
            await group.__aenter__()


def test_a_closed_blocking_watch_or_file_is_not_entered_again(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    with SyncDrive(drive_id) as drive:
        events = drive.watch()
        with events:
            pass
        with pytest.raises(DriveClosedError, match="is closed"):
            events.__enter__()
        with drive.open("a.txt", "wb") as writer:
            writer.write(b"a")
        with pytest.raises(InvalidConfigError, match=r"closed file 'a\.txt'"):
            writer.__enter__()
        with drive.open("a.txt") as reader:
            assert reader.read() == b"a"
        with pytest.raises(InvalidConfigError, match=r"closed file 'a\.txt'"):
            reader.__enter__()
        assert drive.list(".") == ["a.txt"]


@pytest.mark.parametrize("group", [None, "pollers"])
async def test_short_timeouts_take_what_is_committed_without_a_blocking_read(
    make_drive: MakeDrive, drive_id: str, group: str | None
) -> None:
    """``next(0)`` and waits shorter than the server's clock are reads that do not block
    (a blocked XREAD ends on the server's tick: ~100 ms for ``next(0)``)."""
    drive = make_drive(drive_id)
    watch = drive.watch(group=group)
    assert await watch.next(timeout=0) is None
    assert await watch.next(timeout=0.01) is None
    await drive.write_bytes("a.txt", b"1")
    await drive.write_bytes("b.txt", b"2")
    first, second = await watch.next(timeout=0), await watch.next(timeout=0.01)
    assert (first and first.path, second and second.path) == ("a.txt", "b.txt")
    assert await watch.next(timeout=0) is None
    await watch.aclose()


async def test_a_read_cancelled_while_it_waits_leaves_no_reply_for_the_next_command(
    drive_id: str, env: dict[str, str]
) -> None:
    """A watch's blocking read is cancelled with its reply still to come: the connection it
    used must not go back to the pool, where the next command would read that reply."""
    async with Drive(drive_id) as drive:
        await drive.write_bytes("before", b"x")
        conn = await drive._connection()
        client, probe = conn.client, conn.index.keys.prefix + "probe"  # in the drive's slot
        watch = drive.watch(since="0")
        first = await watch.next()
        assert first is not None and first.path == "before"
        with anyio.move_on_after(0.3):
            await watch.next()  # blocks in XREAD until cancelled
        # The server still holds that XREAD: a command sent behind it on the same connection
        # would wait for it, then read its reply.
        with anyio.fail_after(2):
            for n in range(10):
                await client.set(probe, n)
                assert await client.get(probe) == str(n)
        await drive.write_bytes("after", b"y")
        await watch.aclose()
        assert [e.path async for e in drive.watch(since="0", timeout=0.5)] == ["before", "after"]


async def test_since_resumes_after_an_event(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    watch = drive.watch()
    for i in range(5):
        await drive.write_bytes(f"f{i}", b"x")
    events = await collect(watch, 5)
    resumed = drive.watch(since=events[1].id, timeout=0.3)
    assert [e.path async for e in resumed] == ["f2", "f3", "f4"]
    replay = drive.watch(since="0", timeout=0.3)
    assert [e.id async for e in replay] == [e.id for e in events]
    for bad in ("yesterday", "1_000", "\u0661\u0662", str(2**64), "1-2-3", " 1", "-1", "1-"):
        with pytest.raises(InvalidConfigError, match="not an event id"):  # not at the first read
            drive.watch(since=bad)


async def test_expired_cursor(
    make_drive: MakeDrive, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", "10")
    drive = make_drive(drive_id)
    slow = drive.watch()
    await drive.write_bytes("first", b"x")
    first = (await collect(slow, 1))[0]
    for i in range(40):
        await drive.write_bytes(f"f{i}", b"x")
    with pytest.raises(CursorExpiredError, match="list") as expired:
        await collect(drive.watch(since=first.id), 1)
    assert isinstance(expired.value, LookupError)
    # A watcher that fell behind by more than what is retained is told so, not skipped ahead.
    with pytest.raises(CursorExpiredError):
        await collect(slow, 1)
    # "0" replays what is retained: the newest 10 or a few more.
    kept = [e.path async for e in drive.watch(since="0", timeout=0.3)]
    assert 10 <= len(kept) <= 12
    assert kept[-1] == "f39"


@pytest.mark.parametrize("step", [3600.0, -3600.0])
async def test_a_step_of_this_machines_clock_moves_no_watch(
    env: dict[str, str], drive_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    """This machine's clock set an hour forward after the drive connected: a watch made
    then missed what was committed in its first hour, and a get waiting for a file did not
    see it come; set back, a watch replayed the hour before it. A new version's mtime was
    this clock's, not the server's that its event carries."""
    async with Drive(drive_id) as drive, Drive(drive_id) as other:
        await drive.write_bytes("before.txt", b"x")  # connected; an event before the watch
        await asyncio.sleep(0.1)  # (one committed a moment before watch() may come too)
        wall = time.time
        monkeypatch.setattr(time, "time", lambda: wall() + step)
        watch = drive.watch()
        getting = asyncio.ensure_future(drive.get("late.txt", to=tmp_path / "late", timeout=30))
        await until_a_get_waits(drive)
        await other.write_bytes("after.txt", b"y")
        await other.write_bytes("late.txt", b"z")
        event = await watch.next(timeout=10)
        assert event is not None and event.path == "after.txt"
        await asyncio.wait_for(getting, 20)
        assert (tmp_path / "late").read_bytes() == b"z"
        written = await drive.write_bytes("mine.txt", b"m")
        mine = await watch.next(timeout=10)
        while mine is not None and mine.path != "mine.txt":
            mine = await watch.next(timeout=10)
        assert mine is not None and abs(written.mtime - mine.timestamp) < 5
        assert abs((await other.info("mine.txt")).mtime - wall()) < 5
        await watch.aclose()


@pytest.mark.parametrize(("age", "ahead"), [(120, 5), (0.5, 3600)])
async def test_a_watch_measures_the_servers_clock_again_at_its_start(
    env: dict[str, str], drive_id: str, age: float, ahead: float
) -> None:
    """Measured ``age`` s ago, the drive's idea of the server's clock is ``ahead`` s ahead
    of it now: the clocks drifted apart (~4 s a day at 50 ppm, without NTP), or the server's
    was set back since (its new events' ids then stay at the newest's, behind the old
    measure). A start taken from it missed what came after the call."""
    async with Drive(drive_id) as drive, Drive(drive_id) as other:
        await drive.write_bytes("before.txt", b"x")
        conn = drive._conn
        assert conn is not None
        conn.clock_at -= age
        conn.server_ms_at -= (age - ahead) * 1000
        await asyncio.sleep(0.1)
        watch = drive.watch()
        await other.write_bytes("after.txt", b"y")
        event = await watch.next(timeout=10)
        assert event is not None and event.path == "after.txt"
        assert abs(conn.server_time() - (await other.info("after.txt")).mtime) < 1
        await watch.aclose()


async def test_a_watch_started_before_the_servers_clock_was_set_forward_misses_nothing(
    env: dict[str, str], drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set forward between watch() and its first read: a start taken from a measure made
    then would put the call an hour later than the events committed after it."""
    async with Drive(drive_id) as drive, Drive(drive_id) as other:
        await drive.write_bytes("before.txt", b"x")
        await asyncio.sleep(0.1)
        watch = drive.watch()
        clock_of = drive_module._clock_of

        async def set_forward(client: Any, *args: Any) -> tuple[float, float, float]:
            server_ms, at, error = await clock_of(client, *args)
            return server_ms + 3_600_000, at, error

        monkeypatch.setattr(drive_module, "_clock_of", set_forward)
        await other.write_bytes("after.txt", b"y")
        event = await watch.next(timeout=10)
        assert event is not None and event.path == "after.txt"
        await watch.aclose()


async def until_a_get_waits(drive: Drive) -> None:
    """Return once a ``get(timeout=)`` of ``drive`` waits for its file (its watch reads)."""
    while True:
        room = drive._conn.waiting_room if drive._conn is not None else None
        watch = room._watch if room is not None else None
        if watch is not None and watch._reading is not None:
            return
        await asyncio.sleep(0.001)


def measure_due(conn: Any) -> None:
    """As a minute later: the drive measures the server's clock again at its next call."""
    conn.clock_at -= 61
    conn.clock_tried_at -= 61


def drop_connections(url: str) -> None:
    """Have the server close its clients' connections (an idle timeout, a restart, say)."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()  # (a stopped server answers again first)
        client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # type: ignore[no-untyped-call]
    finally:
        client.close()


def measured_two_minutes_ago_an_hour_ahead(conn: Any) -> None:
    conn.clock_at -= 120
    conn.server_ms_at -= (120 - 3600) * 1000


async def test_a_drive_measures_the_servers_clock_again_beside_its_calls_once_a_minute(
    env: dict[str, str], drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For the mtimes of new versions, on the server's clock: it drifts, or is set. Once
    for many calls at once (each sent its own, on a connection of its own: a busy drive
    opened ~100 a minute), and not again at each call if it failed (an outage cost each
    call a wait for it)."""

    clock_of, measures = drive_module._clock_of, []

    async def counted(*args: Any) -> tuple[float, float, float]:
        measures.append(args)
        return await clock_of(*args)

    async with Drive(drive_id) as drive:
        await drive.write_bytes("a", b"x")
        conn = drive._conn
        assert conn is not None
        measured_two_minutes_ago_an_hour_ahead(conn)
        monkeypatch.setattr(drive_module, "_clock_of", counted)
        await asyncio.gather(*(drive.exists(f"f{n}") for n in range(50)))
        if "clock" in conn.chores:
            await conn.chores["clock"]
        assert len(measures) == 1
        assert abs((await drive.write_bytes("b", b"x")).mtime - time.time()) < 5

        measured_two_minutes_ago_an_hour_ahead(conn)
        conn.clock_tried_at = 0.0
        tried: list[str] = []

        async def fails(*args: Any) -> Any:
            tried.append("TIME")
            raise redis.exceptions.ConnectionError("no answer")

        monkeypatch.setattr(drive_module, "_clock_of", fails)
        for n in range(3):
            await drive.exists(f"g{n}")
            await asyncio.sleep(0)
        assert tried == ["TIME"]

        async def slow(*args: Any) -> tuple[float, float, float]:  # (a 1.9 s round trip)
            return time.time() * 1000 + 3_600_000, steady_now(), 951.0

        monkeypatch.setattr(drive_module, "_clock_of", slow)
        kept = (conn.server_ms_at, conn.clock_at, conn.clock_error_ms)
        await conn.measure_clock()  # (a SyncDrive paused with it under way, say)
        assert (conn.server_ms_at, conn.clock_at, conn.clock_error_ms) == kept
    # (not monkeypatch.undo(): it would undo `env` too, and the SyncDrive below would use
    # the default root, the user's, and start its embedded server)
    monkeypatch.setattr(drive_module, "_clock_of", clock_of)

    def blocking() -> None:  # a SyncDrive's calls, its loop running only meanwhile
        with SyncDrive(drive_id) as sync:
            sync.write_bytes("c", b"x")
            conn = sync._here.loop.drive._conn
            measured_two_minutes_ago_an_hour_ahead(conn)
            for n in range(3):
                written = sync.write_bytes(f"d{n}", b"x")
            assert abs(written.mtime - time.time()) < 5
            assert conn.clock_error_ms < 1000

    await anyio.to_thread.run_sync(blocking)


def test_a_syncdrive_sees_its_connection_closed_between_calls_the_clock_due(
    drive_id: str, tmp_path: Path, private_server: ServerProcess
) -> None:
    """Measured beside a SyncDrive's call, the clock's reply was often left unread when the
    call returned (its loop runs only in calls); the connection, dropped by the server
    meanwhile (an idle timeout, a restart), then went unseen, and the next call failed."""
    private_server.start()
    with SyncDrive(drive_id, root=tmp_path / "root", redis_url=private_server.url) as drive:
        drive.write_bytes("a.txt", b"x")
        conn = drive._here.loop.drive._conn
        for _ in range(10):
            measure_due(conn)
            with pytest.raises(FileNotFoundError):  # (a call that sends no command itself)
                drive.put(tmp_path / "missing.txt", to="m.txt")
            drop_connections(private_server.url)
            assert drive.exists("a.txt")


def test_a_syncdrive_sees_its_connection_closed_after_a_clock_measure_cut_short(
    drive_id: str, tmp_path: Path, private_server: ServerProcess
) -> None:
    """The measure cut at its second by a stalled server, its reply left to no one: the
    drive's connection, dropped by the server before the next call, went unseen (the
    reply still counted as awaited), and that call failed."""
    private_server.start()
    assert private_server.proc is not None
    pid = private_server.proc.pid
    with SyncDrive(drive_id, root=tmp_path / "root", redis_url=private_server.url) as drive:
        drive.write_bytes("a.txt", b"x")
        measure_due(drive._here.loop.drive._conn)
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(1.5, os.kill, (pid, signal.SIGCONT))
        resume.start()
        try:
            with pytest.raises(FileNotFoundError):  # (a call that sends no command itself)
                drive.put(tmp_path / "missing.txt", to="m.txt")
        finally:
            resume.join()
            os.kill(pid, signal.SIGCONT)
        drop_connections(private_server.url)  # (once it answers, the measure's reply too)
        assert drive.exists("a.txt")


@pytest.mark.parametrize("max_age", ["0.2", "0.0004"])  # (less than a ms: one, not none)
async def test_max_age_retention(
    make_drive: MakeDrive, drive_id: str, monkeypatch: pytest.MonkeyPatch, max_age: str
) -> None:
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAX_AGE", max_age)
    drive = make_drive(drive_id)
    watch = drive.watch()
    await drive.write_bytes("old", b"x")
    old = (await collect(watch, 1))[0]
    # Wait out the age limit on the server's clock (the events' own timestamps), then write.
    while True:
        event = (await drive.write_bytes("tick", b"x"), await collect(watch, 1))[1][0]
        if event.timestamp - old.timestamp > float(max_age) + 0.1:
            break
        await anyio.sleep(0.05)
    with pytest.raises(CursorExpiredError):
        await collect(drive.watch(since=old.id), 1)


def test_sync_watch(env: dict[str, str], workdir: Path, drive_id: str) -> None:
    with SyncDrive(drive_id) as drive:
        with drive.watch(timeout=0.3) as events:
            drive.write_bytes("a", b"1")
            drive.write_bytes("b", b"2")
            assert [e.path for e in events] == ["a", "b"]
        watch = drive.watch(since="0")
        assert next(watch).path == "a"
        watch.close()
        assert watch.group is None
        with drive.watch(group="g", timeout=0.3) as member:
            assert member.group == "g" and "group='g'" in repr(member)
        assert repr(member).endswith(") [closed]")
    assert repr(drive).endswith(") [closed]")


async def test_many_writers_two_watchers_same_order(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    writers, per_writer = 4, 2500
    code = f"""
        import sys
        from asyncdrive import SyncDrive
        w = sys.argv[1]
        with SyncDrive({drive_id!r}, component_name="w" + w) as drive:
            for i in range({per_writer}):
                drive.write_bytes(f"w{{w}}/{{i}}", b"x")
    """
    watcher_code = f"""
        from asyncdrive import SyncDrive
        with SyncDrive({drive_id!r}) as drive:
            with drive.watch(timeout=60) as events:
                print("ready", flush=True)
                for n, event in enumerate(events, 1):
                    print(event.id, event.path, flush=False)
                    if n == {writers * per_writer}:
                        break
    """
    other = spawn(watcher_code, env, workdir)
    assert read_line(other) == "ready"
    async with Drive(drive_id) as drive:
        watch = drive.watch(timeout=60)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code), str(w)], cwd=workdir, env=env
            )
            for w in range(writers)
        ]
        mine = [(e.id, e.path) for e in await collect(watch, writers * per_writer)]
        for proc in procs:
            assert await anyio.to_thread.run_sync(proc.wait) == 0
    out, err = await anyio.to_thread.run_sync(other.communicate)
    assert other.returncode == 0, err
    theirs = [tuple(line.split(" ", 1)) for line in out.splitlines()]
    assert len(mine) == writers * per_writer
    assert theirs == mine
    for w in range(writers):
        mine_w = [int(p.split("/")[1]) for _, p in mine if p.startswith(f"w{w}/")]
        assert mine_w == list(range(per_writer))


async def test_watch_survives_server_restart(
    private_server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    private_server.start()
    kwargs: dict[str, Any] = {"root": tmp_path / "root", "redis_url": private_server.url}
    async with Drive(drive_id, **kwargs) as drive:
        watch = drive.watch(timeout=60)
        for i in range(20):
            await drive.write_bytes(f"before/{i}", b"x")
        got = [e.path for e in await collect(watch, 10)]
        private_server.kill()
        restarted = False

        async def restart_soon() -> None:
            nonlocal restarted
            await anyio.sleep(0.5)  # let the watcher hit the outage first
            private_server.start()
            restarted = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart_soon)
            # The first 10 are buffered; the next read meets the dead server and retries.
            got += [e.path for e in await collect(watch, 10)]
            while not restarted:
                await anyio.sleep(0.05)
        for i in range(20):
            await drive.write_bytes(f"after/{i}", b"x")
        got += [e.path for e in await collect(watch, 20)]
    assert got == [f"before/{i}" for i in range(20)] + [f"after/{i}" for i in range(20)]


async def test_resume_after_watcher_killed(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    code = f"""
        from asyncdrive import SyncDrive
        drive = SyncDrive({drive_id!r})
        for event in drive.watch(since="0"):
            print(event.id, event.path, flush=True)
    """
    async with Drive(drive_id) as drive:
        for i in range(30):
            await drive.write_bytes(f"f{i:02}", b"x")
        proc = spawn(code, env, workdir)
        seen = [read_line(proc).split(" ") for _ in range(12)]
        proc.kill()
        proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        last_id = seen[-1][0]
        rest = [e.path async for e in drive.watch(since=last_id, timeout=0.5)]
    assert [p for _, p in seen] + rest == [f"f{i:02}" for i in range(30)]


async def test_group_shares_events(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    a = drive.watch(group="indexers", timeout=1)
    b = drive.watch(group="indexers", timeout=1)
    plain = drive.watch(timeout=1)
    for i in range(20):
        await drive.write_bytes(f"f{i:02}", b"x")
    got_a: list[str] = []
    got_b: list[str] = []

    async def consume(watch: Any, into: list[str]) -> None:
        async for event in watch:
            into.append(event.path)
            await anyio.sleep(0.01)  # "work", so both members get a share

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, a, got_a)
        tg.start_soon(consume, b, got_b)
    assert sorted(got_a + got_b) == [f"f{i:02}" for i in range(20)]
    assert got_a and got_b
    assert [e.path async for e in plain] == [f"f{i:02}" for i in range(20)]


async def test_group_redelivers_from_a_killed_member(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    member = f"""
        import sys, time
        from asyncdrive import SyncDrive
        drive = SyncDrive({drive_id!r})
        hang_on = sys.argv[1]
        watch = drive.watch(group="workers", claim_idle=1.0, timeout=3)
        print("ready", flush=True)
        for event in watch:
            print("got", event.path, event.deliveries, flush=True)
            if event.path == hang_on:
                time.sleep(3600)  # dies here, mid-event, before asking for the next
            print("done", event.path, flush=True)
        drive.close()
    """
    async with Drive(drive_id) as drive:
        victim = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(member), "f00"],
            cwd=workdir, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert victim.stdout is not None
        assert await anyio.to_thread.run_sync(victim.stdout.readline) == "ready\n"
        await drive.write_bytes("f00", b"x")
        assert await anyio.to_thread.run_sync(victim.stdout.readline) == "got f00 1\n"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        victim.stdout.close()
        for i in range(1, 10):
            await drive.write_bytes(f"f{i:02}", b"x")
        survivor = await anyio.to_thread.run_sync(
            lambda: run_python(
                textwrap.dedent(member).replace("sys.argv[1]", "'none'"), cwd=workdir, env=env
            )
        )
    done = [line.split()[1] for line in survivor.stdout.splitlines() if line.startswith("done")]
    assert sorted(done) == [f"f{i:02}" for i in range(10)]
    got = dict(line.split()[1:] for line in survivor.stdout.splitlines() if line[:3] == "got")
    assert got == {f"f{i:02}": "2" if i == 0 else "1" for i in range(10)}  # (f00: again)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "asyncdrive-loop"]


async def test_early_exit_async_leaves_nothing(env: dict[str, str], drive_id: str) -> None:
    before = set(threading.enumerate())
    async with Drive(drive_id) as drive:
        watch = drive.watch()
        await drive.write_bytes("a", b"x")
        async for _event in watch:
            break
        with anyio.move_on_after(0.2):
            await collect(drive.watch(), 1)  # cancelled mid-read
        await drive.write_bytes("b", b"x")  # the connection pool still works
        assert drive._conn is not None
        client: Any = drive._conn.client
    # Every connection went back to its pool (a cluster client has one per node).
    if hasattr(client, "get_nodes"):
        assert all(len(n._free) == len(n._connections) for n in client.get_nodes())
    else:
        assert not client.connection_pool._in_use_connections
    await anyio.sleep(0)
    leftover = [t for t in set(threading.enumerate()) - before if t.name == "asyncdrive-loop"]
    assert leftover == []


def test_early_exit_blocking_leaves_no_threads(env: dict[str, str], drive_id: str) -> None:
    with SyncDrive(drive_id) as drive:
        drive.write_bytes("a", b"x")
        for _event in drive.watch(since="0"):
            break
        with drive.watch(since="0") as events:
            next(events)
        assert len(loop_threads()) == 1
    for thread in loop_threads():
        thread.join(timeout=10)
    assert loop_threads() == []


#: A blocking watch in a child, until a KeyboardInterrupt ends it; ``when_watching`` runs
#: once the watch is open (it says so, or arranges the interrupt).
WATCH_UNTIL_INTERRUPTED = """
    import signal, threading
    from asyncdrive import SyncDrive

    def interrupt_the_loop_thread():
        loop_thread = next(t for t in threading.enumerate() if t.name == "asyncdrive-loop")
        signal.pthread_kill(loop_thread.ident, signal.SIGINT)

    drive = SyncDrive({drive_id!r})
    try:
        with drive.watch() as events:
            {when_watching}
            for event in events:
                pass
    except KeyboardInterrupt:
        drive.close()
        names = [t.name for t in threading.enumerate() if t.name == "asyncdrive-loop"]
        print("interrupted", names, flush=True)
"""


def test_ctrl_c_in_blocking_watch(env: dict[str, str], workdir: Path, drive_id: str) -> None:
    code = WATCH_UNTIL_INTERRUPTED.format(
        drive_id=drive_id, when_watching='print("ready", flush=True)'
    )
    proc = spawn(code, env, workdir)
    assert read_line(proc) == "ready"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted []"


def test_ctrl_c_taken_by_another_thread_ends_a_blocking_watch(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    # A signal another thread takes, like one that lands just before the main thread
    # blocks, does not end the main thread's wait: the wait must still let the handler run.
    # (That race hung test_ctrl_c_in_blocking_watch in ~1 run in 20 on a cluster.)
    code = WATCH_UNTIL_INTERRUPTED.format(
        drive_id=drive_id, when_watching="threading.Timer(0.3, interrupt_the_loop_thread).start()"
    )
    proc = spawn(code, env, workdir)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted []"


def test_sync_watch_starts_exactly_at_the_call(env: dict[str, str], drive_id: str) -> None:
    with SyncDrive(drive_id) as drive:
        for i in range(5):
            drive.write_bytes("before", str(i).encode())  # committed just before the call
            watch = drive.watch(timeout=0.3)
            drive.write_bytes("after", b"x")
            assert [e.path for e in watch] == ["after"]
            drive.delete("after")


async def test_aclose_ends_a_waiting_watch_at_once_without_reconnecting(
    env: dict[str, str], workdir: Path, drive_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    drive = Drive(drive_id)  # (SyncDrive: test_sync.py, a close from another thread)
    await drive.write_bytes("a.txt", b"x")
    watch = drive.watch()
    await watch.pin_start()  # exactly after the write above

    async def close_soon() -> None:
        await anyio.sleep(0.3)
        await drive.aclose()

    with anyio.fail_after(1.5):  # the first reconnection attempt alone would wait 1 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(close_soon)
            with pytest.raises(
                DriveError, match=r"was closed \(aclose\(\)\) before its watch"
            ) as cut:
                await watch.next()
    assert "what it changed" not in str(cut.value)  # a watch changes nothing
    assert "retrying" not in caplog.text  # not taken for a lost connection


async def test_next_with_a_timeout_polls_and_the_watch_goes_on(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        watch = drive.watch("jobs")
        await watch.pin_start()
        assert await watch.next(0.1) is None
        assert await watch.next(0) is None
        await drive.write_bytes("jobs/a", b"x")
        await drive.write_bytes("jobs/b", b"x")
        # Committed already: timeout=0 takes them without waiting.
        assert [getattr(await watch.next(0), "path", None) for _ in range(3)] == [
            "jobs/a",
            "jobs/b",
            None,
        ]
        await drive.write_bytes("jobs/c", b"x")
        event = await watch.next(5)  # still watching after the Nones
        assert event is not None and event.path == "jobs/c"
        await watch.aclose()
        assert await watch.next(0) is None  # closed


def test_next_with_a_timeout_polls_a_blocking_watch(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    with SyncDrive(drive_id) as blocking, blocking.watch("jobs") as sync_watch:
        assert sync_watch.next(0.05) is None
        blocking.write_bytes("jobs/d", b"x")
        got = sync_watch.next(5)
        assert got is not None and got.path == "jobs/d"
        assert sync_watch.cursor == got.id and "recursive" not in repr(sync_watch)
    with SyncDrive(drive_id) as blocking, blocking.watch(recursive=False) as quiet:
        assert quiet.cursor  # pinned when made: resumable before its first event
        assert "recursive=False" in repr(quiet)


async def test_a_watch_that_saw_nothing_resumes_from_its_cursor(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        async with drive.watch(timeout=0.2) as quiet:
            assert [e async for e in quiet] == []
        assert quiet.cursor and "cursor=" in repr(quiet)  # where it started
        await drive.write_bytes("meanwhile", b"x")
        assert [e.path async for e in drive.watch(since=quiet.cursor, timeout=0.3)] == ["meanwhile"]


async def test_a_group_is_told_once_of_events_trimmed_before_it_read_them(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", "5")
    async with Drive(drive_id) as drive:
        async with drive.watch(group="g") as first:
            await drive.write_bytes("f00", b"x")
            event = await first.next(5)
            assert event is not None and event.path == "f00"
        for i in range(1, 20):
            await drive.write_bytes(f"f{i:02}", b"x")
        async with drive.watch(group="g") as late:
            with pytest.raises(CursorExpiredError, match="Group 'g' now goes on"):
                await late.next(5)
        # Not told again: the group goes on from the oldest event retained.
        async with drive.watch(group="g", timeout=0.5) as again:
            rest = [e.path async for e in again]
        assert 5 <= len(rest) <= 6 and rest == [f"f{i:02}" for i in range(20 - len(rest), 20)]


async def test_a_group_is_told_of_held_events_trimmed_before_another_member_took_them(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", "5")
    async with Drive(drive_id) as drive:
        with pytest.raises(RuntimeError, match="failed"):
            async with drive.watch(group="g", claim_idle=0.1) as holder:
                await drive.write_bytes("held", b"x")
                event = await holder.next(5)
                assert event is not None and event.path == "held"
                raise RuntimeError("the member failed: 'held' stays unacknowledged")
        for i in range(20):
            await drive.write_bytes(f"f{i:02}", b"x")
        await anyio.sleep(0.2)  # longer than claim_idle
        async with drive.watch(group="g", claim_idle=0.1, timeout=0.5) as other:
            assert event is not None
            with pytest.raises(CursorExpiredError, match=f"events {event.id} of group 'g'"):
                await other.next(5)
            with pytest.raises(CursorExpiredError, match="Group 'g' now goes on"):
                await other.next(5)  # f00... were trimmed unread too
            assert [e.path async for e in other][-1] == "f19"


async def test_a_group_member_rides_out_a_server_restart_and_leaves_on_close(
    private_server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    private_server.start()
    kwargs: dict[str, Any] = {"root": tmp_path / "root", "redis_url": private_server.url}
    async with Drive(drive_id, **kwargs) as drive:
        watch = drive.watch(group="g")
        await drive.write_bytes("before", b"x")
        event = await watch.next(5)
        assert event is not None and event.path == "before"
        private_server.kill()

        async def restart_and_write() -> None:
            await anyio.sleep(0.5)  # the member's next step (its ack) meets the outage
            private_server.start()
            await drive.write_bytes("after", b"x")

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart_and_write)
            event = await watch.next(30)  # retried, not a raw ConnectionError
        assert event is not None and event.path == "after"
        await watch.aclose()
        conn = await drive._connection()
        key = conn.index.keys.events
        # Both acknowledged ("before" after the restart), and the member left the group.
        assert (await conn.client.xpending(key, "g"))["pending"] == 0
        assert await conn.client.xinfo_consumers(key, "g") == []


async def test_group_members_must_watch_one_path(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Drive(drive_id) as drive:
        conn = await drive._connection()
        key = conn.index.keys.events
        async with drive.watch("ckpt", group="g", claim_idle=60) as member:
            await drive.write_bytes("ckpt/1.pt", b"x")
            event = await member.next(5)
            assert event is not None and event.path == "ckpt/1.pt"
            other = drive.watch("logs", group="g")
            with pytest.raises(InvalidConfigError) as refused:
                await other.next(1)
            message = str(refused.value)
            assert isinstance(refused.value, DriveError) and isinstance(refused.value, ValueError)
            assert f"Drive {drive.name!r}: consumer group 'g' watches 'ckpt' and its " in message
            assert "this watch is of 'logs' and its sub-folders" in message
            assert "give this path a group of its own" in message
            for wrong in (drive.watch("ckpt", recursive=False, group="g"), drive.watch(group="g")):
                with pytest.raises(InvalidConfigError, match=r"direct children only|whole drive"):
                    await wrong.next(1)
                await wrong.aclose()
            # Refused before taking anything: the event goes to the member, and the refused
            # watch never joined.
            await drive.write_bytes("ckpt/2.pt", b"x")
            event = await member.next(5)
            assert event is not None and event.path == "ckpt/2.pt"
            names = {c["name"] for c in await conn.client.xinfo_consumers(key, "g")}
            assert names == {member._consumer}
            await other.aclose()
        # Its members gone (closed), the group takes another path, from its position.
        async with drive.watch("logs", group="g", timeout=0.5) as logs:
            await drive.write_bytes("ckpt/3.pt", b"x")
            await drive.write_bytes("logs/a", b"x")
            assert [e.path async for e in logs] == ["logs/a"]
        # A member working on an event it holds keeps the group's path however long it has
        # not read, within claim_idle: another path is refused meanwhile.
        monkeypatch.setattr(_watch, "ACTIVE_MEMBER", 0.2)
        async with drive.watch("logs", group="g", claim_idle=60) as busy:
            await drive.write_bytes("logs/busy", b"x")
            event = await busy.next(5)
            assert event is not None and event.path == "logs/busy"
            await anyio.sleep(0.3)  # working on it: longer than ACTIVE_MEMBER
            with pytest.raises(InvalidConfigError, match="group 'g' watches 'logs'"):
                await drive.watch("ckpt", group="g", claim_idle=60).next(1)
        # A member that has not read for a while, nor held its event within claim_idle,
        # counts as gone; one still in the group that reads again after the group took
        # another path is refused then.
        async with drive.watch("logs", group="g", claim_idle=60) as stale:
            await drive.write_bytes("logs/b", b"x")
            event = await stale.next(5)
            assert event is not None and event.path == "logs/b"
            await anyio.sleep(0.3)
            async with drive.watch("ckpt", group="g", claim_idle=0.2) as new:
                await drive.write_bytes("ckpt/4.pt", b"x")
                event = await new.next(5)
                assert event is not None and event.path == "ckpt/4.pt"
                # What the stale member held (logs/b) is dropped with the group's old path,
                # as its events not yet read are: acknowledged, handed to no member.
                held = await conn.client.xpending_range(key, "g", min="-", max="+", count=10)
                assert [h["message_id"] for h in held] == [event.id]
                with pytest.raises(InvalidConfigError, match="group 'g' watches 'ckpt'"):
                    await stale.next(1)


async def test_groups_are_listed_and_removed_once_unused(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Drive(drive_id) as drive:
        assert await drive.groups() == []
        async with drive.watch(timeout=0.1) as plain:  # a plain watch makes no group
            assert [e async for e in plain] == []
        assert await drive.groups() == []
        member = drive.watch("ckpt", group="g", claim_idle=60)
        await drive.write_bytes("ckpt/1.pt", b"x")
        held = await member.next(5)
        assert held is not None
        for name in ("ckpt/2.pt", "ckpt/3.pt"):
            await drive.write_bytes(name, b"x")
        (info,) = await drive.groups()
        assert (info.name, info.path, info.recursive) == ("g", "ckpt", True)
        assert (info.members, info.pending, info.last_event_id) == (1, 1, held.id)
        assert info.lag == 2 and info.idle is not None and 0 <= info.idle < 5
        # Held by a member: refused, and nothing removed.
        with pytest.raises(GroupInUseError) as refused:
            await drive.remove_group("g")
        assert isinstance(refused.value, DriveError) and isinstance(refused.value, RuntimeError)
        message = str(refused.value)
        assert f"Drive {drive.name!r}: consumer group 'g' is in use" in message
        assert f"member {member._consumer!r} holds 1 event not yet acknowledged" in message
        assert "nothing was removed" in message and "force=True" in message
        assert [g.name for g in await drive.groups()] == ["g"]
        # Read within ACTIVE_MEMBER, holding nothing: refused too.
        event = await member.next(5)
        assert event is not None and event.path == "ckpt/2.pt"
        assert await member.next(5) is not None and await member.next(0) is None  # acked all
        with pytest.raises(GroupInUseError, match=r"read \d+\.\d s ago"):
            await drive.remove_group("g")
        # Idle longer than that, holding nothing (it may be gone): removed.
        monkeypatch.setattr(_watch, "ACTIVE_MEMBER", 0.2)
        await anyio.sleep(0.3)
        assert await drive.remove_group("g") is True
        assert await drive.groups() == []
        conn = await drive._connection()
        assert await conn.client.hgetall(conn.index.keys.group_paths) == {}
        assert await drive.remove_group("g") is False  # none left
        # The member that read it learns its group is gone, rather than making it again
        # from where it started (which would hand out its events twice).
        gone = r"group 'g' is gone .*\(removed with remove_group\(\), or lost"
        with pytest.raises(CursorExpiredError, match=gone):
            await member.next(1)
        assert await drive.groups() == []
        await member.aclose()
        # force=True removes a group whose member holds an event.
        async with drive.watch("ckpt", group="g", since="0", claim_idle=60) as anew:
            event = await anew.next(5)
            assert event is not None and event.path == "ckpt/1.pt"  # a new group, from since
            assert await drive.remove_group("g", force=True) is True
            with pytest.raises(CursorExpiredError, match="is gone"):
                await anew.next(1)
        assert await drive.groups() == []
        with pytest.raises(InvalidConfigError, match="Invalid group name 'a:b'"):
            await drive.remove_group("a:b")

        def blocking() -> tuple[list[Any], bool]:
            with SyncDrive(drive_id) as sync:
                with sync.watch(group="s", timeout=0.1) as watch:
                    assert list(watch) == []  # the iteration's end: the member left
                    listed = sync.groups()
                return listed, sync.remove_group("s")

        listed, removed = await anyio.to_thread.run_sync(blocking)
        assert [(g.name, g.path, g.members, g.idle) for g in listed] == [("s", ".", 0, None)]
        assert removed


async def test_a_named_member_restarted_takes_back_what_it_held_at_once(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """A member named with member= that died holding an event (here: left its watch on an
    error, which acknowledges nothing) gets it back at its first read, not another member
    after claim_idle (a minute here): a restarted evaluator resumes its checkpoint first."""
    async with Drive(drive_id) as drive:
        with pytest.raises(RuntimeError, match="crashed"):
            async with drive.watch(group="g", member="eval-0", claim_idle=60) as first:
                await drive.write_bytes("ckpt/1.pt", b"1")
                held = await first.next(5)
                assert held is not None and held.path == "ckpt/1.pt"
                raise RuntimeError("crashed while evaluating")
        await drive.write_bytes("ckpt/2.pt", b"2")
        with pytest.raises(RuntimeError, match="crashed"):
            async with drive.watch(group="g", member="eval-0", claim_idle=60) as again:
                back = await again.next(5)
                assert back is not None and held is not None
                assert (back.id, back.path) == (held.id, "ckpt/1.pt")
                raise RuntimeError("crashed again")
        async with drive.watch(group="g", member="eval-0", claim_idle=60) as again:
            last = await again.next(5)
            assert held is not None and back is not None and last is not None
            assert last.id == held.id
            # How many times it came: the member may set aside one that keeps crashing it.
            assert (held.deliveries, back.deliveries, last.deliveries) == (1, 2, 3)
            after = await again.next(5)
            assert after is not None and after.path == "ckpt/2.pt"  # then on, once each
            assert after.deliveries == 1
            assert await again.next(0) is None
        (group,) = await drive.groups()
        assert (group.members, group.pending) == (0, 0)  # all acknowledged, the member left
        with pytest.raises(InvalidConfigError, match="pass group= too"):
            drive.watch(member="eval-0")
        with pytest.raises(InvalidConfigError, match="Invalid member name 'a b'"):
            drive.watch(group="g", member="a b")


async def test_a_named_member_takes_back_all_its_name_held_and_keeps_to_one_path(
    env: dict[str, str], workdir: Path, drive_id: str, redis_url: str
) -> None:
    """Every event a member of its name held comes back at once, one a step, before new
    ones (not the first only, the others after claim_idle). Two live members of one name
    watching two paths: the second is refused (they took the group's path from each other,
    each dropping the other's events)."""
    async with Drive(drive_id) as drive:
        for name in ("e1", "e2", "e3"):
            await drive.write_bytes(f"jobs/{name}", b"x")
        key = (await drive._connection()).index.keys.events
        async with raw_redis(redis_url) as client:  # "w" held two (a step cut short, say)
            await client.xgroup_create(key, "g", id="0")
            await client.xreadgroup("g", "w", {key: ">"}, count=2)
            assert (await client.xpending(key, "g"))["pending"] == 2
        async with drive.watch("jobs", group="g", member="w", claim_idle=60) as again:
            got = [(await again.next(5)) for _ in range(3)]
            assert [e.path if e else None for e in got] == ["jobs/e1", "jobs/e2", "jobs/e3"]
            assert "member='w'" in repr(again)
            async with drive.watch("other", group="g", member="w") as elsewhere:
                with pytest.raises(InvalidConfigError, match="watches 'jobs' and its sub-"):
                    await elsewhere.next(0)
        (group,) = await drive.groups()
        assert (group.path, group.pending) == ("jobs", 0)


async def test_a_folder_watch_reads_past_other_paths_events_within_its_timeout(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch of a folder reads the whole drive's log: events of other paths, however
    many, never make next(0) (or a short timeout) say "no event" while its own wait. A
    group's step acknowledges other paths' events in the server (up to 200 a step), rather
    than handing out each in a round trip of its own."""
    monkeypatch.setattr(_watch, "_BATCH", 5)  # (a batch is 500: 12 events are 3 batches)
    Path("other").mkdir()
    for i in range(250):  # more than a group step skips
        Path(f"other/{i}").write_bytes(b"x")
    async with Drive(drive_id) as drive:
        await drive.put("other", to="other")
        await drive.write_bytes("jobs/sub/c", b"x")
        await drive.write_bytes("jobs/a", b"x")
        await drive.write_bytes("jobs/b", b"x")
        async with drive.watch("jobs", since="0") as plain:
            got = [await plain.next(0) for _ in range(4)]
            assert [e.path if e else None for e in got] == ["jobs/sub/c", "jobs/a", "jobs/b", None]
        async with drive.watch("jobs", since="0", group="sub", recursive=False) as children:
            got = [await children.next(0) for _ in range(3)]
            assert [e.path if e else None for e in got] == ["jobs/a", "jobs/b", None]
        steps = 0
        group_step = _index.Index.group_step

        async def counted(*args: Any, **kwargs: Any) -> _index.GroupStep:
            nonlocal steps
            steps += 1
            return await group_step(*args, **kwargs)

        monkeypatch.setattr(_index.Index, "group_step", counted)
        async with drive.watch("jobs/sub", since="0", group="g") as member:
            got = [await member.next(0), await member.next(0)]
            assert [e.path if e else None for e in got] == ["jobs/sub/c", None]
        assert steps <= 5  # 252 events of other paths skipped in 2 steps, not 252
        for group in await drive.groups():
            assert (group.pending, group.lag) == (0, 0)  # the others acknowledged


async def test_an_event_held_by_a_live_member_is_not_reported_lost_when_trimmed(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", "5")
    async with Drive(drive_id) as drive:
        holder = drive.watch(group="g", claim_idle=60)
        await holder.pin_start()
        await drive.write_bytes("slow job", b"x")
        held = await holder.next(5)
        assert held is not None and held.path == "slow job"
        async with drive.watch(group="g", claim_idle=60) as other:
            for i in range(20):  # trims the held event while its member works on it
                await drive.write_bytes(f"f{i:02}", b"x")
                event = await other.next(5)  # no CursorExpiredError: nothing was lost
                assert event is not None and event.path == f"f{i:02}"
        assert await holder.next(0) is None  # done with it, and nothing else was left
        await holder.aclose()


async def test_a_group_member_cancelled_mid_step_keeps_the_event_it_took(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id) as drive, drive.watch(group="g", claim_idle=60) as member:
        await member.pin_start()
        for i in range(60):
            await drive.write_bytes(f"f{i:02}", b"x")
        got: list[str] = []
        with anyio.fail_after(30):  # an event lost to a cancellation would wait 60 s
            while len(got) < 60:
                with anyio.move_on_after(random.uniform(0, 0.0006)):  # often mid-step
                    event = await member.next()
                    assert event is not None
                    got.append(event.path)
        assert got == [f"f{i:02}" for i in range(60)]  # all, once, in order


@pytest.mark.parametrize("outage", ["killed", "hung"])
async def test_a_watch_timeout_holds_during_an_outage(
    private_server: ServerProcess,
    tmp_path: Path,
    workdir: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
    outage: str,
) -> None:
    """The server killed (connections refused) or hung (stopped: its connections open,
    nothing answered): next(timeout) keeps to its timeout (and a margin), not the 60 s of
    retrying a lost connection, nor the 30 s of waiting for a reply."""
    monkeypatch.setenv("ASYNCDRIVE_REDIS_TIMEOUT", "30")
    private_server.start()
    kwargs: dict[str, Any] = {"root": tmp_path / "root", "redis_url": private_server.url}
    async with Drive(drive_id, **kwargs) as drive:
        for group in (None, "g"):
            watch = drive.watch(group=group)
            assert await watch.next(0.05) is None  # connected, and looked once
            assert private_server.proc is not None
            pid = private_server.proc.pid
            if outage == "killed":
                private_server.kill()
            else:
                os.kill(pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(10), pytest.raises(DriveUnavailableError):
                    await watch.next(1)
            finally:
                if outage == "killed":
                    private_server.start()
                else:
                    os.kill(pid, signal.SIGCONT)
            await watch.aclose()


async def test_group_members_leave_when_their_iteration_ends_and_sweep_idle_ones(
    env: dict[str, str],
    workdir: Path,
    drive_id: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Drive(drive_id) as drive:
        await drive.write_bytes("a", b"x")
        async for _event in drive.watch(group="g", since="0", timeout=0.2):
            pass  # no `with`: the end of the iteration closes the watch
        conn = await drive._connection()
        key = conn.index.keys.events
        async with raw_redis(redis_url) as client:
            assert await client.xinfo_consumers(key, "g") == []
            # Members gone without leaving (killed): one holding nothing, one holding "b".
            await drive.write_bytes("b", b"x")
            await client.execute_command("XGROUP", "CREATECONSUMER", key, "g", "ghost")
            await client.xreadgroup("g", "holder", {key: ">"}, count=1)
            monkeypatch.setattr(_index, "IDLE_MEMBER_MS", 0)
            async with drive.watch(group="g", claim_idle=60) as member:
                await member.next(0)
            left = {c["name"] for c in await client.xinfo_consumers(key, "g")}
            assert left == {"holder"}  # its event stays claimable; the idle one went


async def test_a_group_member_dropped_unclosed_warns(env: dict[str, str], drive_id: str) -> None:
    """A plain watch dropped frees everything it held: no warning. A group member dropped
    without closing stays in the group, holding its last event: a ResourceWarning says so."""
    async with Drive(drive_id) as drive:
        await _drop_watches(drive)


async def test_a_group_member_leaves_with_its_drive(env: dict[str, str], drive_id: str) -> None:
    """A group watch iterated in a task ended with DriveClosedError at its drive's close, but
    its member stayed in the group (until idle for 10 min) and the watch, collected, warned
    "unclosed": the drive's close has it leave, as the watch's own close would."""
    drive = Drive(drive_id)
    await drive.write_bytes("a.txt", b"x")
    member = drive.watch(since="0", group="g")
    handled: list[str] = []

    async def consume(watch: _watch.Watch) -> None:
        async for event in watch:
            handled.append(event.path)

    task = asyncio.create_task(consume(member))
    while not handled:
        await asyncio.sleep(0.01)
    await drive.aclose()
    with pytest.raises(DriveClosedError):
        await task
    with pytest.raises(DriveClosedError):
        await member.next(0)  # (ended with its drive, as any of its calls)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del member, task
        gc.collect()
    assert [str(w.message) for w in caught] == []
    async with Drive(drive_id) as again:
        (group,) = await again.groups()
        assert (group.members, group.pending) == (0, 0)  # (its event counted as handled)


async def test_a_close_says_what_it_cut_short_may_have_changed(
    env: dict[str, str], drive_id: str
) -> None:
    """A get cut short by its drive's close said "(what it changed may stand: look again)":
    a get changes nothing of the drive. And a watch asked of a closed drive was made, to
    fail at its first read (SyncDrive.watch refused at once)."""
    drive = Drive(drive_id)
    await drive.write_bytes("a.txt", b"x")
    waiting = asyncio.create_task(drive.get("late.txt", timeout=30))
    while waiting not in drive._calls:  # (in its call: the close cuts it short)
        await asyncio.sleep(0.01)
    await drive.aclose()
    with pytest.raises(DriveClosedError, match=r"before its get of 'late.txt'") as caught:
        await waiting
    assert "may stand" not in str(caught.value)
    with pytest.raises(DriveClosedError, match="is closed; create a new Drive"):
        drive.watch()


async def _drop_watches(drive: Drive) -> None:
    await drive.write_bytes("a.txt", b"x")
    plain = drive.watch(since="0")
    member = drive.watch(since="0", group="g")
    idle = drive.watch("elsewhere", group="g-idle")  # (joined, given nothing: holds none)
    assert (await plain.next(5), await member.next(5)) != (None, None)
    assert await idle.next(0) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del plain, member, idle
        gc.collect()
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "stays in group 'g'" in messages[0], messages
    assert "holding its last event" in messages[0] and "aclose()" in messages[0]
    assert "stays in group 'g-idle', until the group drops it" in messages[1], messages


@pytest.mark.parametrize("group", [None, "g"])
async def test_closing_a_watch_ends_another_tasks_iteration_at_once(
    env: dict[str, str], drive_id: str, group: str | None
) -> None:
    """aclose() from another task cuts the waiting read short: the iteration ends, on a
    quiet drive too, and a group member that left takes no event after."""
    async with Drive(drive_id) as drive:
        await drive.write_bytes("before.txt", b"x")
        watch = drive.watch(group=group)
        await watch.pin_start()  # exactly after before.txt
        seen: list[str] = []

        async def iterate() -> None:
            async for event in watch:
                seen.append(event.path)

        iterating = asyncio.create_task(iterate())
        while watch._reading is None:  # until it waits for an event
            await asyncio.sleep(0.001)
        await watch.aclose()
        await asyncio.wait_for(iterating, 10)  # not until the next event
        assert seen == []
        await drive.write_bytes("after.txt", b"x")
        if group is not None:  # the event is the group's other members', none taken
            async with drive.watch(group=group) as other:
                event = await other.next(5)
                assert event is not None and event.path == "after.txt"
        assert seen == []


def test_closing_a_sync_watch_ends_another_threads_iteration(
    env: dict[str, str], drive_id: str
) -> None:
    with SyncDrive(drive_id) as drive:
        watch = drive.watch()
        seen: list[str] = []
        thread = threading.Thread(target=lambda: seen.extend(e.path for e in watch))
        thread.start()
        while watch._watch._reading is None:  # until it waits for an event
            time.sleep(0.001)
        watch.close()
        thread.join(10)
        assert not thread.is_alive() and seen == []


async def test_tasks_sharing_a_watch_get_each_event_once(
    env: dict[str, str], drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        watch = drive.watch()
        got: list[str] = []

        async def take() -> None:
            while (event := await watch.next(1)) is not None:
                got.append(event.path)

        takers = [asyncio.create_task(take()) for _ in range(3)]
        for i in range(60):
            await drive.write_bytes(f"f{i:02}", b"x")
        await asyncio.gather(*takers)
        assert sorted(got) == [f"f{i:02}" for i in range(60)]
        for bad in (float("nan"), -1):
            with pytest.raises(InvalidConfigError, match="timeout"):
                await watch.next(bad)
        await watch.aclose()


async def test_a_get_waiting_for_a_path_rides_out_trimmed_events(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get(timeout=) falls behind the change log (paused while others write): it looks
    again and waits on, not CursorExpiredError, which is a watcher's to handle."""
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", "5")
    gate = asyncio.Event()
    read_events = _index.Index.read_events
    reads = 0

    async def first_read_late(self: _index.Index, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:
            await gate.wait()
        return await read_events(self, *args, **kwargs)

    async with Drive(drive_id) as drive:
        await drive.write_bytes("warm", b"x")
        monkeypatch.setattr(_index.Index, "read_events", first_read_late)
        getting = asyncio.create_task(drive.get("target.txt", timeout=30))
        while reads == 0:
            await asyncio.sleep(0.01)
        for i in range(30):  # the get's next events trimmed meanwhile
            await drive.write_bytes(f"other/{i}", b"x")
        gate.set()
        while reads < 2:  # told the events were trimmed, it looked again and waits anew
            await asyncio.sleep(0.001)
        await drive.write_bytes("target.txt", b"at last")
        await asyncio.wait_for(getting, 20)
        assert Path("target.txt").read_bytes() == b"at last"


async def test_watch_arguments_are_checked_with_messages_of_their_own(
    env: dict[str, str], drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        with pytest.raises(
            InvalidConfigError, match=rf"^Drive {drive.name!r}: Invalid group name 'a:b'"
        ):
            drive.watch(group="a:b")
        with pytest.raises(InvalidConfigError, match="claim_idle=inf"):
            drive.watch(group="g", claim_idle=float("inf"))
        with pytest.raises(InvalidConfigError, match="claim_idle=1e"):  # (more than 2**63 ms)
            drive.watch(group="g", claim_idle=1e300)
        with pytest.raises(DriveTypeError, match="claim_idle=None must be a number"):
            drive.watch(group="g", claim_idle=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidConfigError, match="since=123 is not an event id"):
            drive.watch(since=123)  # type: ignore[arg-type]
        blocking = r"SyncDrive\.watch\(\)"
        with SyncDrive(drive_id) as sync, pytest.raises(RuntimeError, match=blocking):
            sync.watch()


async def test_a_drive_keeps_a_few_idle_connections_for_watches(
    env: dict[str, str], drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        watches = [drive.watch() for _ in range(12)]
        await asyncio.gather(*(w.next(0.3) for w in watches))  # 12 reads at once
        readers = (await drive._connection()).connected.readers
        for w in watches:
            await w.aclose()
        if readers is None:
            pytest.skip("a Redis Cluster's watches read through redis-py's own pool")
        assert "4 idle, 0 lent" in repr(readers)


async def test_a_group_step_reads_its_own_group_not_every_group(
    env: dict[str, str], drive_id: str, redis_url: str
) -> None:
    """Each step listed every group of the drive (XINFO GROUPS) to find its own position:
    with a group per job, every group read grew slower, blocking the server meanwhile. The
    position is kept beside the group's path now; groups from before, and groups gone
    (destroyed by hand), are found, or made again, as they were."""
    async with Drive(drive_id) as drive:
        conn = await drive._connection()
        keys = conn.index.keys
        for n in range(3):
            await drive.write_bytes(f"{n}.txt", b"x")
        async with raw_redis(redis_url) as client:
            watch = drive.watch(group="g", since="0")
            first = await watch.next(timeout=0)
            assert first is not None and first.path == "0.txt"
            kept = await client.hget(keys.group_paths, "last:g")
            assert kept == first.id  # kept as delivered
            # A group from before the position was kept: found by the list, then kept.
            await client.hdel(keys.group_paths, "last:g")
            second = await watch.next(timeout=0)
            assert second is not None and second.path == "1.txt"
            assert await client.hget(keys.group_paths, "last:g") == second.id
            # Destroyed by hand, its kept position stale: made again, as from the start.
            await watch.aclose()
            await client.execute_command("XGROUP", "DESTROY", keys.events, "g")
            again = drive.watch(group="g", since="0")
            event = await again.next(timeout=0)
            assert event is not None and event.path == "0.txt", event
            await again.aclose()


async def test_a_group_moved_by_hand_goes_on_from_where_it_was_moved(
    env: dict[str, str], drive_id: str, redis_url: str
) -> None:
    """Its kept position lagged (moved by hand, or by an older version's step): the member
    read the events after it again and again (thousands of steps a second)."""
    async with Drive(drive_id) as drive:
        keys = (await drive._connection()).index.keys
        watch = drive.watch(group="g", since="0")
        await drive.write_bytes("first.txt", b"x")
        first = await watch.next(timeout=5)
        assert first is not None and first.path == "first.txt"
        for n in range(5):
            await drive.write_bytes(f"backlog{n}.txt", b"x")
        async with raw_redis(redis_url) as client:
            await client.execute_command("XGROUP", "SETID", keys.events, "g", "$")  # skipped
            assert await watch.next(timeout=0.3) is None
            newest = await client.xrevrange(keys.events, count=1)
            assert newest and await client.hget(keys.group_paths, "last:g") == newest[0][0]
        await drive.write_bytes("after.txt", b"x")
        after = await watch.next(timeout=5)
        assert after is not None and after.path == "after.txt"
        assert await watch.next(timeout=0) is None
        await watch.aclose()


async def test_a_watch_read_of_another_server_says_if_it_lost_the_event_read_last(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a Sentinel failover the new primary may lack the events the old one took in
    its last moments: a watch that read one had its cursor past events the new one holds,
    and skipped them in silence. Its first read of another server checks that the event
    it read last is there: CursorExpiredError where it is not."""
    read_events = _index.Index.read_events
    serving = {"server": ("10.0.0.1", 6379)}

    async def of_the_server_now(self: _index.Index, *args: Any, **kwargs: Any) -> Any:
        events, trimmed, _ = await read_events(self, *args, **kwargs)
        return events, trimmed, serving["server"]

    monkeypatch.setattr(_index.Index, "read_events", of_the_server_now)
    async with Drive(drive_id) as drive, drive.watch() as watch:
        await drive.write_bytes("a.txt", b"a")
        event = await watch.next(5)
        assert event is not None and event.path == "a.txt"
        # Another server, which has the event read last: the watch goes on.
        serving["server"] = ("10.0.0.2", 6379)
        await drive.write_bytes("b.txt", b"b")
        event = await watch.next(5)
        assert event is not None and event.path == "b.txt"
        # Another, which lost it (as the old primary of a failover took it): said.
        conn = await drive._connection()
        await conn.client.xdel(conn.index.keys.events, event.id)
        serving["server"] = ("10.0.0.3", 6379)
        await drive.write_bytes("c.txt", b"c")
        with pytest.raises(CursorExpiredError, match=r"after a failover") as lost:
            await watch.next(5)
        assert event.id in str(lost.value) and "Re-list the drive" in str(lost.value)
        with pytest.raises(CursorExpiredError, match=r"after a failover"):
            await watch.next(5)  # said again, as a trimmed cursor is: never read on

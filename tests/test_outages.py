"""Outages and external servers: bounded failures, recovery, warnings, ACL users."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import trustme
from redis.crc import key_slot

import asyncdrive
from asyncdrive import (
    Drive,
    DriveError,
    DriveUnavailableError,
    GcReport,
    IndexLostError,
    InvalidConfigError,
    SyncDrive,
    _wire,
)
from asyncdrive import _drive as drive_module
from asyncdrive._index import Index, Keys

from .procs import read_line, spawn, stop_all
from .servers import ClusterServers, ServerProcess, command, free_ports, wait_for


@pytest.fixture
def server(private_server: ServerProcess) -> Iterator[ServerProcess]:
    private_server.start()
    yield private_server


def kwargs(server: ServerProcess, tmp_path: Path) -> dict[str, Any]:
    return {"root": tmp_path / "root", "redis_url": server.url}


async def test_outage_fails_fast_then_recovers(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("a.txt", b"before")
        server.kill()
        for operation in (
            drive.write_bytes("b.txt", b"during"),
            drive.list("."),
            drive.read_bytes("a.txt"),
            drive.delete("a.txt"),
            drive.get("a.txt"),
            drive.watch().pin_start(),  # (let redis-py's ConnectionError out: a chaos soak)
        ):
            with pytest.raises(DriveUnavailableError, match="cannot reach Redis") as down:
                await operation
            assert isinstance(down.value, ConnectionError)
        server.start()  # persistent: the index is back as it was
        # The same Drive object works again, and the failed calls left nothing behind.
        assert await drive.list(".") == ["a.txt"]
        assert await drive.read_bytes("a.txt") == b"before"
        store = tmp_path / "root" / "drives" / drive_id[6:]
        assert sorted(p.name for p in (store / "default").iterdir()) == ["a.txt"]
        assert list((store / ".tmp").iterdir()) == []
        await drive.write_bytes("b.txt", b"after")
        assert await drive.list(".") == ["a.txt", "b.txt"]


async def test_waiting_gets_ride_out_a_restart_of_the_server(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """As a watch does: the gets waiting for their files (one watch for them all) failed
    on an outage of a few tenths of a second, whatever their timeouts."""
    async with (
        Drive(drive_id, **kwargs(server, tmp_path)) as reader,
        Drive(drive_id, component_name="w", **kwargs(server, tmp_path)) as writer,
    ):
        await writer.write_bytes("warm", b"x")
        gets = [asyncio.create_task(reader.get(f"in/{i}", timeout=60)) for i in range(3)]
        room = None
        while room is None or room._watch is None or room._watch._reading is None:
            await asyncio.sleep(0.01)  # until the room's watch reads (blocked on the server)
            room = reader._conn.waiting_room if reader._conn else None
        server.kill()
        await asyncio.sleep(1.5)
        server.start()
        for i in range(3):
            await writer.write_bytes(f"in/{i}", b"%d" % i)
        await asyncio.wait_for(asyncio.gather(*gets), 30)
        assert [(workdir / "in" / str(i)).read_bytes() for i in range(3)] == [b"0", b"1", b"2"]


async def test_a_get_waiting_on_a_hung_server_says_it_is_unavailable(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """Its timeout passing while the server hangs: not "was not put" (it could not look)."""
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("warm", b"x")
        getting = asyncio.create_task(drive.get("never", timeout=2))
        while drive._conn is None or "1 waiting" not in repr(drive._conn.waiting_room):
            await asyncio.sleep(0.01)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(DriveUnavailableError, match="no answer within"):
                await asyncio.wait_for(getting, 20)
            # One started during the hang: its first look keeps to its timeout too (it
            # waited the client's 10 s reply timeout).
            with pytest.raises(DriveUnavailableError, match=r"no answer within 2 s"):
                await drive.get("never", timeout=1)
        finally:
            server.proc.send_signal(signal.SIGCONT)


async def test_hung_server_times_out(
    server: ServerProcess,
    tmp_path: Path,
    workdir: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCDRIVE_REDIS_TIMEOUT", "0.5")
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("a.txt", b"x")
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            with pytest.raises(DriveUnavailableError, match="Timeout"):
                await drive.list(".")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await drive.list(".") == ["a.txt"]


async def test_warns_once_about_risky_server_settings(
    server: ServerProcess,
    tmp_path: Path,
    workdir: Path,
    drive_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("appendonly", "no")
    finally:
        client.close()
    url = server.url + "?db=0"  # a URL this process has not checked yet
    with caplog.at_level(logging.WARNING, logger="asyncdrive"):
        for _ in range(2):
            async with Drive(drive_id, root=tmp_path / "root", redis_url=url) as drive:
                await drive.list(".")
    warnings = [r.getMessage() for r in caplog.records if r.name == "asyncdrive"]
    assert len(warnings) == 2, warnings
    assert "allkeys-lru" in warnings[0] and "noeviction" in warnings[0]
    assert "no persistence" in warnings[1]


async def test_acl_user_and_wrong_password(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.acl_setuser(
            "alice", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
            commands=["+@all"],
        )  # fmt: skip
    finally:
        client.close()
    good = f"unix://alice:s3cret@{server.sock}"
    async with Drive(drive_id, root=tmp_path / "root", redis_url=good) as drive:
        await drive.write_bytes("a.txt", b"as alice")
        assert await drive.read_bytes("a.txt") == b"as alice"
        assert "s3cret" not in repr(drive)
    bad = f"unix://alice:wrong-pass@{server.sock}"
    async with Drive(drive_id, root=tmp_path / "root", redis_url=bad) as drive:
        with pytest.raises(DriveUnavailableError) as refused:
            await drive.list(".")
    assert "wrong-pass" not in str(refused.value)
    assert "alice:***@" in str(refused.value)
    assert "user name and password" in str(refused.value)  # not "is the server running?"


def acl_user(server: ServerProcess, name: str, *rules: str) -> str:
    """Make an ACL user of ``rules`` (``ACL SETUSER``'s words); return its URL."""
    client = redis.Redis.from_url(server.url)
    try:
        client.execute_command("ACL", "SETUSER", name, "on", ">pw", *rules)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return f"unix://{name}:pw@{server.sock}"


def files_under(root: Path) -> list[str]:
    """The drives' files on disk (not asyncdrive's own, nor uploads)."""
    return sorted(
        str(f.relative_to(root))
        for f in root.glob("drives/*/*/**/*")
        if f.is_file() and ".tmp" not in f.parts and not f.name.startswith(".asyncdrive")
    )


async def test_acl_users_are_checked_before_anything_is_written(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """A user without a command a commit needs is refused at connect, not halfway through
    a commit script (which Redis does not roll back); one without channels is no matter."""
    root = tmp_path / "root"
    # The usual ACL user: every command and key, no channel (Valkey's resetchannels default).
    usual = acl_user(server, "usual", "~*", "+@all")
    async with Drive(drive_id, root=root, redis_url=usual) as drive:
        await drive.write_bytes("a.txt", b"a")  # its wake-up PUBLISH denied: no matter
        await drive.delete("a.txt")
        assert await drive.list(".") == []
    # What the messages advise works, every call; a user denied every write reads.
    advised = ("+@read", "+@write", "+@stream", "+@scripting", "+@transaction", "+@connection")
    advised_url = acl_user(server, "advised", "~asyncdrive:*", *advised, "+info", "+time")
    reading = ("+@read", "+@scripting", "+@transaction", "+@connection", "+info", "+time")
    reader = acl_user(server, "reader", "~asyncdrive:*", *reading)
    async with Drive(drive_id, root=root, redis_url=advised_url) as drive:
        await drive.write_bytes("x/a.txt", b"a")
        assert await drive.list(".", recursive=True) == ["x/a.txt"]
        assert [i.path for i in await drive.list_info("x")] == ["x/a.txt"]
        await drive.get("x", to="got")
    async with Drive(drive_id, root=root, redis_url=reader) as drive:
        assert await drive.read_bytes("x/a.txt") == b"a"
        assert await drive.list("x") == ["x/a.txt"]

        async def join_a_group() -> object:
            async with drive.watch(group="g") as member:
                return await anext(member)

        writes: list[Callable[[], Awaitable[object]]] = [
            join_a_group,
            lambda: drive.write_bytes("x/a.txt", b"b"),
            lambda: drive.write_bytes("x/new.txt", b"b"),
            lambda: drive.put(workdir / "local.txt", to="x/put.txt"),
            lambda: drive.delete("x/a.txt"),
            lambda: drive.gc(),
        ]
        (workdir / "local.txt").write_bytes(b"local")
        for write in writes:  # refused before writing anything, on disk or in Redis
            with pytest.raises(InvalidConfigError, match="lets its user only read") as refused:
                await write()
            assert "nothing was written" in str(refused.value)
        assert await drive.read_bytes("x/a.txt") == b"a"
        assert files_under(root) == [f"drives/{drive.name}/default/x/a.txt"]
    # Redis 7's read-only keys: its scripts that only read run as such (EVALSHA_RO).
    keys_reader = acl_user(server, "keysreader", "%R~asyncdrive:*", "+@all")
    async with Drive(drive_id, root=root, redis_url=keys_reader) as drive:
        assert await drive.exists("x/a.txt") and not await drive.exists("x/b.txt")
        assert await drive.exists("x") and (await drive.info("x/a.txt")).size == 1
        assert await drive.read_bytes("x/a.txt") == b"a"
        with pytest.raises(InvalidConfigError, match="lets its user only read"):
            await drive.write_bytes("x/new.txt", b"b")
        assert files_under(root) == [f"drives/{drive.name}/default/x/a.txt"]
    # Scripts allowed by name (EVAL, EVALSHA), not their read-only forms: all as before.
    by_name = acl_user(server, "byname", "~*", "&*", "+@all", "-@scripting", "+eval", "+evalsha")
    async with Drive(drive_id, root=root, redis_url=by_name) as drive:
        await drive.write_bytes("x/b.txt", b"b")
        assert await drive.exists("x/b.txt") and await drive.read_bytes("x/a.txt") == b"a"
    async with Drive(drive_id, root=root, redis_url=advised_url) as drive:
        await drive.delete("x", recursive=True)
    cases = [
        (acl_user(server, "nostream", "~*", "&*", "+@all", "-xadd"), "XADD"),
        (acl_user(server, "nolen", "~*", "&*", "+@all", "-xlen"), "XLEN"),
        (acl_user(server, "nomulti", "~*", "&*", "+@all", "-multi"), "MULTI"),
        (acl_user(server, "nokeys", "~other:*", "&*", "+@all"), "access a key"),
    ]
    for url, denied in cases:
        async with Drive(drive_id, root=root, redis_url=url) as drive:
            with pytest.raises(InvalidConfigError) as refused:
                await drive.write_bytes("b.txt", b"b")
        message = str(refused.value)
        assert f"Drive {drive.name!r}" in message and denied in message, message
        assert "ACL SETUSER" in message and ":pw@" not in message, message
    noscripts = acl_user(server, "noscripts", "~*", "&*", "+@all", "-@scripting")
    noinfo = acl_user(server, "noinfo", "~*", "&*", "+@all", "-info")
    for url, said in ((noscripts, "to run scripts"), (noinfo, "setup")):
        async with Drive(drive_id, root=root, redis_url=url) as drive:
            with pytest.raises(InvalidConfigError, match=said) as refused:
                await drive.list(".")
            assert "ACL SETUSER" in str(refused.value)
    assert files_under(root) == []  # nothing was written, on disk or (below) in Redis
    client = redis.Redis.from_url(server.url)
    try:
        assert client.keys(f"asyncdrive:{{{drive_id[6:]}}}:e:*") == []
    finally:
        client.close()


async def test_locks_an_outage_kept_are_released_when_the_server_is_back(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A replacement whose commit the server's crash cut holds the path's lock, which the
    server restores with its data: the drive releases it beside its first call after the
    outage, rather than leave it in every writer's way (its own too) for its lease."""
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("a.txt", b"1")
        commit_put = Index.commit_put

        async def crash_first(self: Index, *args: Any, **options: Any) -> Any:
            server.kill()  # the lock is taken (and fsynced: appendfsync always)
            return await commit_put(self, *args, **options)

        with monkeypatch.context() as patched:
            patched.setattr(Index, "commit_put", crash_first)
            with pytest.raises(DriveUnavailableError):
                await drive.write_bytes("a.txt", b"2")
        server.start()
        lock = Keys(drive.name).lock("default", "a.txt")
        admin = redis.Redis.from_url(server.url)
        try:
            assert admin.exists(lock) == 1  # restored with the server's data
            assert await drive.exists("a.txt")  # any call: released beside it
            for _ in range(500):
                if not admin.exists(lock):
                    break
                await asyncio.sleep(0.01)
            assert admin.exists(lock) == 0
        finally:
            admin.close()
        await drive.write_bytes("a.txt", b"3")
        assert await drive.read_bytes("a.txt") == b"3"


async def test_a_server_refusing_writes_says_why_and_keeps_nothing(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """Out of memory, a read-only replica, too few replicas: an error saying what to do, no
    file left."""
    root = tmp_path / "root"
    admin = redis.Redis.from_url(server.url)
    try:
        async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
            await drive.write_bytes("kept.txt", b"kept")
            refusals = [
                (("CONFIG", "SET", "maxmemory", "1"), "maxmemory"),
                (("REPLICAOF", "127.0.0.1", "1"), "read-only replica"),
                (("CONFIG", "SET", "min-replicas-to-write", "1"), "min-replicas-to-write"),
            ]
            for setting, said in refusals:
                admin.execute_command(*setting)  # type: ignore[no-untyped-call]
                try:
                    for write in (
                        lambda: drive.write_bytes("new.txt", b"new"),
                        lambda: drive.write_bytes("kept.txt", b"replaced"),
                        lambda: drive.delete("kept.txt"),
                    ):
                        with pytest.raises(DriveUnavailableError, match=said) as refused:
                            await write()
                        assert f"Drive {drive.name!r}" in str(refused.value)
                    async with drive.watch(group="new") as member:  # (created: a write)
                        with pytest.raises(DriveUnavailableError, match=said):
                            await member.next(1)
                    assert await drive.read_bytes("kept.txt") == b"kept"  # reads go on
                    assert files_under(root) == [f"drives/{drive.name}/default/kept.txt"]
                finally:
                    admin.execute_command("CONFIG", "SET", "maxmemory", "0")  # type: ignore[no-untyped-call]
                    admin.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
                    admin.execute_command("CONFIG", "SET", "min-replicas-to-write", "0")  # type: ignore[no-untyped-call]
            await drive.write_bytes("new.txt", b"new")  # and the same drive writes again
            assert await drive.list(".") == ["kept.txt", "new.txt"]
    finally:
        admin.close()


async def test_a_replacing_put_whose_server_went_before_its_commit_leaves_nothing(
    server: ServerProcess,
    tmp_path: Path,
    workdir: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server gone between a replacing put's install and its commit (one file, or a
    folder's): no commit was sent (the server cannot be reached), so the put undoes its
    install before it raises. It left the new bytes at the path and the old in a backup,
    for gc() to settle (or a rebuild of the index to take for committed)."""
    root = tmp_path / "root"
    Path("folder").mkdir()
    Path("folder/a.bin").write_bytes(b"new")
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("a.bin", b"old")
        await drive.write_bytes("f/a.bin", b"old")
        on_disk = files_under(root)
        real = drive_module._install_staged

        def installed_then_server_gone(*args: Any, **kw: Any) -> Any:
            installed = real(*args, **kw)
            server.kill()
            return installed

        monkeypatch.setattr(drive_module, "_install_staged", installed_then_server_gone)
        for put in (lambda: drive.write_bytes("a.bin", b"new"),
                    lambda: drive.put("folder", to="f")):  # fmt: skip
            with pytest.raises(DriveUnavailableError, match="cannot reach Redis"):
                await put()
            assert files_under(root) == on_disk
            assert not list(root.glob("drives/*/*/**/.asyncdrive-backup*"))
            for name in ("a.bin", "f/a.bin"):
                assert (root / "drives" / drive.name / "default" / name).read_bytes() == b"old"
            server.start()
        monkeypatch.undo()
        assert await drive.read_bytes("a.bin") == b"old"
        assert await drive.read_bytes("f/a.bin") == b"old"
        assert await drive.gc(grace=0) == GcReport()  # nothing left to settle
        await drive.write_bytes("a.bin", b"new")  # and the lock went with the outage
        assert await drive.read_bytes("a.bin") == b"new"


async def test_a_folder_put_refused_midway_through_its_commits_keeps_what_they_committed(
    server: ServerProcess,
    tmp_path: Path,
    workdir: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder put commits a batch of files by a script each: one refused (maxmemory
    reached midway, say) after another committed must not undo the committed one's
    install (it did: its index said the new version, its disk held the old bytes)."""
    real_call_many = _wire.Wire.call_many
    armed = False

    async def second_refused(self: _wire.Wire, commands: Any, **kwargs: Any) -> Any:
        commits = all(c[0] == "EVALSHA" and "commit" in c for c in commands)
        if armed and len(commands) > 1 and commits:  # (the commit scripts, not the locks')
            replies = await real_call_many(self, commands[:1], **kwargs)
            refused = redis.exceptions.OutOfMemoryError("command not allowed when used memory")
            return [*replies, *[refused] * (len(commands) - 1)]
        return await real_call_many(self, commands, **kwargs)

    monkeypatch.setattr(_wire.Wire, "call_many", second_refused)
    Path("src").mkdir()
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        for name in ("a", "b"):
            await drive.write_bytes(f"dir/{name}.txt", f"old {name}".encode())
            Path(f"src/{name}.txt").write_text(f"new {name}")
        armed = True
        with pytest.raises(DriveError):
            await drive.put("src", to="dir")
        armed = False
        for name in ("a", "b"):  # each as its index says, whichever was committed
            info = await drive.info(f"dir/{name}.txt")
            data = await drive.read_bytes(f"dir/{name}.txt")
            assert data == (f"new {name}" if info.version == 2 else f"old {name}").encode()
        assert (await drive.info("dir/a.txt")).version == 2  # (the first was committed)


async def test_a_group_member_rides_out_a_server_short_of_replicas(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """With min-replicas-to-write (as README advises beside Sentinel), a primary short of
    replicas in a failover refuses writes for a while: a group's step, which writes, raised
    at once (each retry too) where a plain watch rode it out. It waits too now, within its
    timeout, then says what refused it."""
    admin = redis.Redis.from_url(server.url)
    try:
        async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
            await drive.write_bytes("a.txt", b"a")
            async with drive.watch(group="g", since="0") as member:
                admin.config_set("min-replicas-to-write", 1)
                with pytest.raises(DriveUnavailableError, match="NOREPLICAS") as refused:
                    await member.next(0.5)
                assert "fewer in-sync replicas" in str(refused.value)

                async def replicas_back() -> None:
                    await anyio.sleep(0.5)
                    await anyio.to_thread.run_sync(admin.config_set, "min-replicas-to-write", 0)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(replicas_back)
                    event = await member.next(20)
                assert event is not None and event.path == "a.txt"
    finally:
        admin.config_set("min-replicas-to-write", 0)
        admin.close()


async def test_a_get_waiting_for_a_file_the_server_forgot_says_so(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("a.txt", b"a")
        client = redis.Redis.from_url(server.url)
        try:
            client.flushall()
        finally:
            client.close()
        with pytest.raises(IndexLostError, match="rebuild"):
            await drive.get("a.txt", to="out.txt", timeout=30)  # at once, not in 30 s
        with pytest.raises(IndexLostError, match="rebuild"):  # not "it has no copy"
            await drive.write_bytes("a.txt", b"b", if_version=1)


async def test_a_commit_failing_after_its_writes_keeps_its_file(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """An error reply after a commit script wrote the index (Redis does not roll it back):
    the new file stays with the entry, never an entry without its bytes."""
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("f/a.txt", b"a")
        client = redis.Redis.from_url(server.url)
        try:  # a folder's count that HINCRBY refuses, after the entry's HSETs
            client.hset(f"asyncdrive:{{{drive.name}}}:d:", "f", "not a number")
        finally:
            client.close()
        with pytest.raises(DriveError, match="not an integer"):
            await drive.write_bytes("f/b.txt", b"b")
        assert await drive.read_bytes("f/b.txt") == b"b"  # indexed, and its bytes there


def test_a_sync_drive_rides_out_a_restart_between_its_calls(
    private_server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """Its loop runs only during calls: the closed connection is seen before the next one."""
    private_server.start()
    with SyncDrive(drive_id, **kwargs(private_server, tmp_path)) as drive:
        drive.write_bytes("a.txt", b"a")
        for _ in range(2):
            private_server.kill()
            private_server.start()
            assert drive.read_bytes("a.txt") == b"a"  # the first call after, not a retry
            drive.write_bytes("a.txt", b"a")
        private_server.kill()  # and not restarted: a new file's put leaves no file
        with pytest.raises(DriveUnavailableError):
            drive.write_bytes("new.txt", b"new")
        assert files_under(tmp_path / "root") == [f"drives/{drive.name}/default/a.txt"]


async def test_a_server_that_is_not_redis_or_refuses_the_url(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    async def not_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        writer.write(replies.pop(0))  # a web server, then one saying "+OK" to everything
        await writer.drain()
        await reader.read(1000)  # and no more
        writer.close()

    replies = [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"+OK\r\n"]
    listener = await asyncio.start_server(not_redis, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        for _ in range(2):
            url = f"redis://127.0.0.1:{port}"
            async with Drive(drive_id, root=tmp_path / "root", redis_url=url) as drive:
                with pytest.raises(DriveUnavailableError, match="not answer as a Redis server"):
                    await asyncio.wait_for(drive.list("."), 5)  # at once, not a timeout
    url = server.url + "?db=9999"
    async with Drive(drive_id, root=tmp_path / "root", redis_url=url) as drive:
        with pytest.raises(InvalidConfigError, match=r"database number") as refused:
            await drive.list(".")
    assert "DB index is out of range" in str(refused.value)
    for database in ("abc", "1/2"):  # redis-py would take them for 0 and 12
        url = f"redis://127.0.0.1:{port}/{database}"
        async with Drive(drive_id, root=tmp_path / "root", redis_url=url) as drive:
            with pytest.raises(InvalidConfigError, match="is not a database number"):
                await drive.list(".")


async def test_sentinel_urls_say_what_is_wrong(
    tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    no_service = "redis+sentinel://127.0.0.1:1/"
    async with Drive(drive_id, root=tmp_path / "root", redis_url=no_service) as drive:
        with pytest.raises(InvalidConfigError, match="names no service"):
            await drive.list(".")
    nobody = "redis+sentinel://127.0.0.1:1/mymaster"
    async with Drive(drive_id, root=tmp_path / "root", redis_url=nobody) as drive:
        with pytest.raises(DriveUnavailableError) as unreachable:
            await drive.list(".")
    assert len(str(unreachable.value)) < 700, str(unreachable.value)  # no client's repr
    # Said as it is: not reached (it blamed the service name), with what the first met.
    assert "No sentinel of the URL could be reached" in str(unreachable.value)
    assert "connecting to 127.0.0.1:1" in str(unreachable.value), str(unreachable.value)
    # A sentinel's port given as a Redis server's (redis://): it knows no TIME, and said so
    # as a bare DriveError naming no fix.
    (port,) = free_ports(1)
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor mymaster 127.0.0.1 1 1\n"
    )
    sentinel = subprocess.Popen(
        [asyncdrive.server_binary(), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(f"redis://127.0.0.1:{port}")
        url = f"redis://127.0.0.1:{port}"
        async with Drive(drive_id, root=tmp_path / "root", redis_url=url) as drive:
            with pytest.raises(InvalidConfigError, match="redis\\+sentinel://host:port/"):
                await drive.exists("a.txt")
    finally:
        sentinel.terminate()
        sentinel.wait(timeout=10)
    # A Redis server named as a sentinel (no SENTINEL command), then one asking a password.
    for password, said in (("", "the URL names sentinels"), ("pw", "?sentinel_password=")):
        folder = tmp_path / f"not-a-sentinel{password}"
        folder.mkdir()
        plain = ServerProcess(folder, tcp=True)
        plain.start()
        try:
            if password:
                admin = redis.Redis(port=plain.port)
                admin.config_set("requirepass", password)
                admin.close()
            url = f"redis+sentinel://:secret@127.0.0.1:{plain.port}/mymaster"
            async with Drive(drive_id, root=tmp_path / "root", redis_url=url) as drive:
                with pytest.raises(DriveUnavailableError, match=re.escape(said)) as refused:
                    await drive.list(".")
        finally:
            plain.stop()
        message = str(refused.value)
        assert "<redis" not in message and "secret" not in message, message
        assert f"Drive {drive.name!r}" in message and "mymaster" in message, message


async def test_a_cluster_not_set_up_says_so(tmp_path: Path, drive_id: str) -> None:
    """A cluster node serving no slots yet: not taken for one "resharding"."""
    node = ServerProcess(tmp_path, tcp=True, extra_args=["--cluster-enabled", "yes"])
    node.start()
    try:
        async with Drive(drive_id, root=tmp_path / "root", redis_url=node.url) as drive:
            with pytest.raises(DriveUnavailableError, match="slots assigned") as refused:
                await drive.list(".")
    finally:
        node.stop()
    assert "cluster_state:ok" in str(refused.value) and node.url in str(refused.value)


async def test_a_url_naming_another_database_is_not_a_lost_index(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
        await drive.write_bytes("a.txt", b"a")
    other_db = f"{server.url}?db=3"
    async with Drive(drive_id, root=tmp_path / "root", redis_url=other_db) as drive:
        with pytest.raises(IndexLostError, match="fix the URL instead") as lost:
            await drive.list(".")
    assert "rebuild_index()" in str(lost.value)


async def test_tls_server(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    # The bundled server has no TLS: put a real TLS endpoint (a certificate from a test CA)
    # in front of it, and connect with rediss://, verifying the certificate.
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def terminate(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(str(server.sock))
        await asyncio.gather(forward(client_r, server_w), forward(server_r, client_w),
                             return_exceptions=True)  # fmt: skip

    proxy = await asyncio.start_server(terminate, "127.0.0.1", 0, ssl=context)
    port = proxy.sockets[0].getsockname()[1]
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"
        async with Drive(drive_id, root=tmp_path / "root", redis_url=url) as drive:
            await drive.write_bytes("secure.txt", b"over TLS")
            assert await drive.read_bytes("secure.txt") == b"over TLS"
        # Without the CA, the server's certificate is refused.
        untrusted = f"rediss://127.0.0.1:{port}/0"
        async with Drive(drive_id, root=tmp_path / "root", redis_url=untrusted) as drive:
            with pytest.raises(DriveUnavailableError, match=r"(?i)certificate"):
                await drive.list(".")
    finally:
        proxy.close()
        await proxy.wait_closed()


async def test_a_cluster_resharding_the_drive_gives_drive_errors(
    tmp_path: Path, drive_id: str
) -> None:
    """While the drive's slot moves between nodes, calls raise `DriveUnavailableError`
    saying so (redis-py gave up with its own ClusterError, or an ASK redirect surfaced as a
    refusal), a watch waits it out, and everything works once the slot has moved."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    cluster = ClusterServers(folder)
    cluster.start()
    clients = [redis.Redis(port=port, decode_responses=True) for port in cluster.ports]
    try:
        name = drive_id[6:]
        slot = key_slot(f"asyncdrive:{{{name}}}:files".encode())
        source = next(n for n, bound in enumerate((5461, 10923, 16384)) if slot < bound)
        target = (source + 1) % 3
        src, dst = clients[source], clients[target]
        ids = [command(c, "CLUSTER", "MYID") for c in clients]
        async with Drive(drive_id, root=tmp_path / "root", redis_url=cluster.url) as drive:
            await drive.write_bytes("a.txt", b"1")
            command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            # Half-way: the file list has moved, the rest of the drive's keys not yet.
            moved = [f"asyncdrive:{{{name}}}:files"]
            command(src, "MIGRATE", "127.0.0.1", cluster.ports[target], "", 0, 5000, "KEYS", *moved)
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: drive.write_bytes("b.txt", b"2"),
                lambda: drive.exists("a.txt"),
                lambda: drive.list("."),
                lambda: drive.delete("a.txt"),
            ]
            for call in calls:
                with pytest.raises(DriveUnavailableError, match="resharding") as moving:
                    await call()
                assert f"Drive {drive.name!r}" in str(moving.value)

            async def finish_the_move() -> None:
                await asyncio.sleep(0.5)
                while keys := command(src, "CLUSTER", "GETKEYSINSLOT", slot, 100):
                    command(src, "MIGRATE", "127.0.0.1", cluster.ports[target], "", 0, 5000,
                            "KEYS", *keys)  # fmt: skip
                for client in clients:
                    command(client, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])

            async with drive.watch(since="0") as watch, asyncio.TaskGroup() as tasks:
                tasks.create_task(finish_the_move())
                first = await watch.next(timeout=30)  # waited through the move
            assert first is not None and first.path == "a.txt"
            assert await drive.list(".") == ["a.txt"]
            await drive.write_bytes("b.txt", b"2")
            await drive.delete("a.txt")
            assert await drive.list(".") == ["b.txt"]
    finally:
        for client in clients:
            client.close()
        cluster.stop()


PAUSED_WATCHER = """
    import asyncio
    from asyncdrive import Drive

    async def main():
        async with Drive({drive_id!r}, root={root!r}, redis_url={url!r}) as drive:
            watch = drive.watch()
            await watch.pin_start()
            print("ready", flush=True)
            print("first:", await watch.next(timeout=1.0), flush=True)
            print("then:", (await watch.next(timeout=30)).path, flush=True)
            await watch.aclose()

    asyncio.run(main())
"""


async def test_a_watcher_paused_past_its_timeout_finds_no_outage(
    server: ServerProcess, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """A process paused through its read (a debugger, SIGSTOP, a suspended machine) was
    told the server did not answer; it answers: no event came in time, that is all."""
    code = PAUSED_WATCHER.format(drive_id=drive_id, root=str(tmp_path / "root"), url=server.url)
    child = spawn(code, dict(os.environ), workdir)
    assert server.proc is not None
    client = redis.Redis.from_url(server.url)
    try:
        assert read_line(child) == "ready"
        deadline = time.monotonic() + 10
        while not any(c["cmd"] == "xread" for c in client.client_list()):
            assert time.monotonic() < deadline, "the watcher never blocked in its read"
            await asyncio.sleep(0.01)
        os.kill(child.pid, signal.SIGSTOP)
        os.kill(server.proc.pid, signal.SIGSTOP)  # so that no reply comes before its limit
        await asyncio.sleep(2.0)  # the pause itself, past the read's timeout and margin
        os.kill(child.pid, signal.SIGCONT)
        await asyncio.sleep(0.1)  # its read's time limit runs out, while the server sleeps
        os.kill(server.proc.pid, signal.SIGCONT)
        assert read_line(child) == "first: None"
        async with Drive(drive_id, **kwargs(server, tmp_path)) as drive:
            await drive.write_bytes("after.txt", b"x")
        assert read_line(child) == "then: after.txt"
        assert child.wait(timeout=30) == 0
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        client.close()
        stop_all([child])

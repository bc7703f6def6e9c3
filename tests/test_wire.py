"""The drive's pipelined connection for short commands (`asyncdrive._wire.Wire`).

Each test runs against a server of its own (standalone, as a Wire is only made for a
standalone server or Sentinel's primary), so that it can stop, kill or restart it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import hiredis
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from asyncdrive import Drive, DriveUnavailableError, SyncDrive
from asyncdrive import _drive as drive_module
from asyncdrive._client import connect
from asyncdrive._drive import PRIMARY_CHECK_INTERVAL
from asyncdrive._index import Keys
from asyncdrive._wire import Wire, WirePool

from .servers import SentinelServers, ServerProcess

#: A script that keeps the server busy for about ARGV[1] ms here, then returns ARGV[2]. It
#: counts (~10^5 steps a millisecond): a script sees the clock stopped (TIME does not move).
BUSY_LUA = """
local x = 0
for i = 1, tonumber(ARGV[1]) * 100000 do x = x + i end
return ARGV[2]
"""


@pytest.fixture
def server(private_server: ServerProcess) -> Iterator[ServerProcess]:
    private_server.start()
    yield private_server


@pytest.fixture
async def other(server: ServerProcess) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client of the same server, to look and to interfere."""
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.aclose()


async def raw(client: aioredis.Redis, *args: Any) -> Any:
    """Send a raw command (the typed helpers do not cover SENTINEL and REPLICAOF)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def make_wire(server: ServerProcess, timeout: float | None = 10.0) -> Wire:
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    return Wire(client.connection_pool, timeout=timeout)


@pytest.fixture
async def wire(server: ServerProcess) -> AsyncIterator[Wire]:
    wire = make_wire(server)
    yield wire
    await wire.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` is true (an event seen from outside), at most 10 s."""
    for _ in range(1000):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 10 s: {what}")


async def sent(wire: Wire, count: int = 1) -> None:
    """Wait until ``count`` commands of ``wire`` are written and await their replies."""

    async def check() -> bool:
        return f"connected, {count} awaiting" in repr(wire)

    await eventually(check, f"{count} command(s) sent")


async def wire_clients(other: aioredis.Redis, wire: Wire) -> list[dict[str, Any]]:
    """The server's connections that belong to ``wire`` (found by the name it was given)."""
    return [c for c in await other.client_list() if c["name"] == f"wire-{id(wire)}"]


async def test_replies_reach_their_callers_in_order_on_one_connection(
    wire: Wire, other: aioredis.Redis
) -> None:
    await wire.call("CLIENT", "SETNAME", f"wire-{id(wire)}")
    replies = await asyncio.gather(*(wire.call("ECHO", f"reply {i}") for i in range(500)))
    assert replies == [f"reply {i}" for i in range(500)]
    assert await wire.call("HSET", "h", "a", "1", "b", "é") == 2
    assert await wire.call("HGETALL", "h") == {"a": "1", "b": "é"}  # RESP3, as redis-py's
    assert len(await wire_clients(other, wire)) == 1
    assert "connected, 0 awaiting" in repr(wire)


async def test_an_error_reply_raises_redis_pys_error_and_keeps_the_connection(
    wire: Wire,
) -> None:
    first = await wire.call("CLIENT", "ID")
    with pytest.raises(redis.exceptions.ResponseError, match="wrong number of arguments"):
        await wire.call("HGET", "h")
    with pytest.raises(redis.exceptions.NoScriptError):
        await wire.call("EVALSHA", "0" * 40, 0)
    assert await wire.call("CLIENT", "ID") == first


async def test_commands_sent_together_have_no_other_callers_command_between(wire: Wire) -> None:
    async def increments() -> list[int]:
        replies = await wire.call_many([("MULTI",), ("INCR", "n"), ("INCR", "n"), ("EXEC",)])
        assert replies[:3] == ["OK", "QUEUED", "QUEUED"]
        return list(replies[3])

    # Transactions and single commands of many tasks, all queued on one connection at once.
    results = await asyncio.gather(*(increments() if i % 3 else wire.call("INCR", "n")
                                     for i in range(60)))  # fmt: skip
    pairs = [r for r in results if isinstance(r, list)]
    assert len(pairs) == 40 and all(b == a + 1 for a, b in pairs)
    singles = [r for r in results if not isinstance(r, list)]
    counted = sorted([*singles, *(n for pair in pairs for n in pair)])
    assert counted == list(range(1, 101))


def count_writes(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of bytes of each write to ``wire``'s transport."""
    assert wire._protocol is not None
    transport = wire._protocol.transport
    writes: list[int] = []
    write = transport.write

    def counted(data: Any) -> None:
        writes.append(len(data))
        write(data)

    monkeypatch.setattr(transport, "write", counted)
    return writes


async def test_commands_queued_while_others_await_go_out_in_one_write(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    await wire.call("PING")
    writes = count_writes(wire, monkeypatch)
    assert await wire.call("ECHO", "alone") == "alone"  # nothing awaited: written at once
    assert len(writes) == 1
    busy = asyncio.ensure_future(wire.call("EVAL", BUSY_LUA, 0, 100, "busy"))
    await sent(wire, 1)
    replies = await asyncio.gather(*(wire.call("ECHO", f"reply {i}") for i in range(50)))
    assert replies == [f"reply {i}" for i in range(50)] and await busy == "busy"
    assert len(writes) == 3  # "alone", the script, then the 50 together


async def test_commands_not_yet_written_when_the_connection_fails_are_never_sent(
    wire: Wire,
) -> None:
    busy = asyncio.ensure_future(wire.call("EVAL", BUSY_LUA, 0, 100, "busy"))
    await sent(wire, 1)
    queued = [asyncio.ensure_future(wire.call("INCR", "never")) for _ in range(5)]
    await asyncio.sleep(0)  # queued, to be written at the end of this turn of the loop
    wire.abort()
    for caller in [busy, *queued]:
        with pytest.raises(redis.exceptions.ConnectionError):
            await caller
    wire._closed = False  # as a wire whose connection failed: the next call reconnects
    assert await asyncio.gather(*(wire.call("ECHO", f"next {i}") for i in range(3))) == [
        "next 0", "next 1", "next 2"]  # fmt: skip
    assert await wire.call("GET", "never") is None  # none of them reached the server


async def test_an_error_among_commands_sent_together_is_raised_once_all_are_read(
    wire: Wire,
) -> None:
    first = await wire.call("CLIENT", "ID")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await wire.call_many([("SET", "s", "1"), ("HGET", "s", "f"), ("ECHO", "third")])
    assert await wire.call("ECHO", "next") == "next"  # the third reply was read, not left
    assert await wire.call("CLIENT", "ID") == first


async def test_commands_sent_together_and_cancelled_give_up_all_their_replies(wire: Wire) -> None:
    busy = asyncio.ensure_future(
        wire.call_many([("EVAL", BUSY_LUA, 0, 300, "busy"), ("ECHO", "b"), ("ECHO", "c")])
    )
    await sent(wire, 3)
    busy.cancel()
    after = asyncio.ensure_future(wire.call("ECHO", "after"))
    with pytest.raises(asyncio.CancelledError):
        await busy
    assert await after == "after"


async def test_a_command_that_cannot_be_sent_takes_no_reply_of_another(wire: Wire) -> None:
    await wire.call("SET", "k", "v")
    with pytest.raises(TypeError):
        await wire.call("SET", "k", object())  # not str, bytes or a number: never sent
    assert await wire.call("GET", "k") == "v"
    assert await wire.call("ECHO", "next") == "next"
    assert "connected, 0 awaiting" in repr(wire)


async def test_a_script_the_server_lost_is_sent_again(
    server: ServerProcess, wire: Wire, other: aioredis.Redis
) -> None:
    script = other.register_script("return {KEYS[1], ARGV[1]}")
    assert await wire.run_script(script, ["k"], ["v"]) == ["k", "v"]  # never loaded: EVAL
    assert await other.script_exists(script.sha) == [True]
    await other.script_flush()
    assert await wire.run_script(script, ["k2"], ["v2"]) == ["k2", "v2"]


async def test_call_many_can_return_error_replies_in_their_places(wire: Wire) -> None:
    commands = [("SET", "k", "v"), ("INCR", "k"), ("GET", "k")]
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        await wire.call_many(commands)
    ok, error, value = await wire.call_many(commands, raise_errors=False)
    assert (ok, value) == ("OK", "v")
    assert isinstance(error, redis.exceptions.ResponseError)
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        wire.checked(error)


async def test_a_cancelled_caller_gives_up_its_reply_and_no_other(wire: Wire) -> None:
    first = await wire.call("CLIENT", "ID")
    busy = asyncio.ensure_future(wire.call("EVAL", BUSY_LUA, 0, 300, "the busy reply"))
    await sent(wire)  # its reply will come after the cancellation
    busy.cancel()
    after = asyncio.ensure_future(wire.call("ECHO", "after"))
    with pytest.raises(asyncio.CancelledError):
        await busy
    assert await after == "after"
    assert await wire.call("CLIENT", "ID") == first  # the same connection


async def test_no_reply_in_time_fails_every_caller_then_the_next_call_reconnects(
    server: ServerProcess,
) -> None:
    wire = make_wire(server, timeout=0.3)
    try:
        first = await wire.call("CLIENT", "ID")
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            outcomes = await asyncio.gather(
                *(wire.call("ECHO", str(i)) for i in range(3)), return_exceptions=True
            )
            waited = loop.time() - started
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert all(isinstance(o, redis.exceptions.TimeoutError) for o in outcomes), outcomes
        assert 0.25 < waited < 5, waited
        assert "not connected" in repr(wire)
        assert await wire.call("CLIENT", "ID") != first
    finally:
        await wire.aclose()


async def test_a_connection_the_server_closed_is_replaced_by_the_next_call(
    wire: Wire, other: aioredis.Redis
) -> None:
    first = await wire.call("CLIENT", "ID")
    await other.client_kill_filter(_id=first)

    async def seen() -> bool:  # the reader has met the end of the stream
        return "not connected" in repr(wire)

    await eventually(seen, "the wire sees its connection closed")
    assert await wire.call("CLIENT", "ID") != first


async def test_a_server_that_dies_fails_the_callers_with_connection_error(
    server: ServerProcess,
) -> None:
    wire = make_wire(server)
    try:
        await wire.call("PING")
        pending = asyncio.ensure_future(wire.call("EVAL", BUSY_LUA, 0, 2000, "never"))
        await sent(wire)
        server.kill()
        with pytest.raises(redis.exceptions.ConnectionError):
            await pending
        with pytest.raises(redis.exceptions.ConnectionError):
            await wire.call("PING")  # nothing listens now
        server.start()
        assert await wire.call("PING") == "PONG"
    finally:
        await wire.aclose()


async def test_aclose_fails_the_callers_and_closes_the_connection(
    server: ServerProcess, other: aioredis.Redis
) -> None:
    wire = make_wire(server)
    await wire.call("CLIENT", "SETNAME", f"wire-{id(wire)}")
    pending = asyncio.ensure_future(wire.call("EVAL", BUSY_LUA, 0, 200, "late"))
    await sent(wire)
    await wire.aclose()
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        await pending
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        await wire.call("PING")

    async def gone() -> bool:  # once the server has finished the script, it sees the close
        return await wire_clients(other, wire) == []

    await eventually(gone, "the server sees the wire's connection closed")
    assert repr(wire) == "<Wire closed>"
    await wire.aclose()  # idempotent


async def test_a_reply_its_caller_abandoned_fails_quietly_when_the_connection_closes(
    server: ServerProcess,
) -> None:
    """A signal's exception (SIGTERM's SystemExit) may take a caller away between the send
    of its command and its wait for the reply: failed by the close, that reply logged
    "Future exception was never retrieved" when collected."""
    wire = make_wire(server)
    await wire.call("PING")
    loop = asyncio.get_running_loop()
    logged: list[str] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: logged.append(context["message"]))
    try:
        assert wire._protocol is not None
        args: tuple[Any, ...] = ("EVAL", BUSY_LUA, "0", "100", "late")
        command = hiredis.pack_command(args)
        abandoned = wire._queue(wire._protocol, loop, command, 1)  # (nobody awaits it)
        await wire.aclose()
        del abandoned
        gc.collect()
    finally:
        loop.set_exception_handler(handler)
    assert logged == []


def test_a_wire_belongs_to_the_event_loop_it_connected_in(server: ServerProcess) -> None:
    async def use_then_close(wire: Wire) -> None:
        await wire.call("PING")
        await wire.aclose()

    wire = make_wire(server)
    with asyncio.Runner() as runner:
        assert runner.run(wire.call("PING")) == "PONG"
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(wire.call("PING"))
        runner.run(wire.aclose())
    asyncio.run(use_then_close(make_wire(server)))  # a new wire in a new loop is fine


async def test_a_drive_on_a_standalone_server_has_a_wire(server: ServerProcess) -> None:
    connected = await connect(server.url, timeout=10)
    try:
        assert connected.kind == "standalone"
        assert isinstance(connected.wire, Wire)
        assert await connected.wire.call("PING") == "PONG"
        assert isinstance(connected.readers, WirePool)
    finally:
        await connected.aclose()
    assert repr(connected.wire) == "<Wire closed>"
    assert repr(connected.readers) == "<WirePool closed>"


# -- the wires for blocking reads ----------------------------------------------------------


@pytest.fixture
async def readers(server: ServerProcess) -> AsyncIterator[WirePool]:
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    readers = WirePool(client.connection_pool, timeout=10.0)
    yield readers
    await readers.aclose()
    await client.aclose()


async def named(wire: Wire) -> Wire:
    await wire.call("CLIENT", "SETNAME", f"wire-{id(wire)}")
    return wire


async def test_a_wire_lent_for_a_blocking_read_is_reused_once_returned(
    readers: WirePool, other: aioredis.Redis
) -> None:
    async with readers.borrowed() as first:
        await named(first)
        # Another reader meanwhile gets a wire of its own: a blocked read holds up its wire.
        async with readers.borrowed() as second:
            assert second is not first
            read = second.call("XREAD", "BLOCK", 5000, "STREAMS", "s", "$")
            blocked = asyncio.ensure_future(read)
            await sent(second)
            assert await first.call("XADD", "s", "*", "k", "v") is not None  # not held up
            reply = await blocked
            assert [fields for _id, fields in reply["s"]] == [["k", "v"]]
    assert repr(readers) == "<WirePool 2 idle, 0 lent>"
    async with readers.borrowed() as again:
        assert again in (first, second)
    assert len(await wire_clients(other, first)) == 1


async def test_a_wire_whose_reader_was_cancelled_is_closed_not_reused(
    readers: WirePool, other: aioredis.Redis
) -> None:
    async def read_forever() -> None:
        async with readers.borrowed() as wire:
            lent.append(await named(wire))
            await wire.call("XREAD", "BLOCK", 0, "STREAMS", "s", "$")

    lent: list[Wire] = []
    reading = asyncio.ensure_future(read_forever())
    await eventually(lambda: _true(lent and "1 awaiting" in repr(lent[0])), "the read is sent")
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    # Its read is still blocked on the server: a next reader would wait behind it forever.
    assert repr(lent[0]) == "<Wire closed>" and repr(readers) == "<WirePool 0 idle, 0 lent>"

    async def gone() -> bool:
        return await wire_clients(other, lent[0]) == []

    await eventually(gone, "the server sees the cancelled reader's connection closed")
    async with readers.borrowed() as wire:
        assert wire is not lent[0]
        assert await wire.call("PING") == "PONG"


async def test_closing_the_readers_fails_a_read_under_way_and_closes_every_wire(
    readers: WirePool, other: aioredis.Redis
) -> None:
    async with readers.borrowed() as idle:
        await named(idle)

    async def read() -> Any:
        async with readers.borrowed() as wire:
            return await wire.call("XREAD", "BLOCK", 0, "STREAMS", "s", "$")

    reading = asyncio.ensure_future(read())
    await eventually(lambda: _true("0 idle, 1 lent" in repr(readers)), "the wire is lent")
    await readers.aclose()
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        await reading
    assert repr(idle) == "<Wire closed>" and repr(readers) == "<WirePool closed>"
    assert await wire_clients(other, idle) == []
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        async with readers.borrowed():
            pass
    await readers.aclose()  # idempotent


async def _true(value: object) -> bool:
    return bool(value)


async def fail_over(sentinel: aioredis.Redis, servers: SentinelServers) -> None:
    """Have ``sentinel`` fail over to the replica, and wait until it names it primary."""
    for _ in range(300):  # until the sentinel has found the replica (it polls)
        try:
            await raw(sentinel, "SENTINEL", "FAILOVER", "mymaster")
            break
        except redis.exceptions.ResponseError as exc:
            assert "NOGOODSLAVE" in str(exc)
            await asyncio.sleep(0.1)
    for _ in range(300):
        address = await raw(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        if int(address[1]) == servers.replica:
            break
        await asyncio.sleep(0.1)
    assert int(address[1]) == servers.replica


async def on_the_replica(servers: SentinelServers, drive: str, path: str) -> bool:
    """Tell whether the index entry of ``path`` is on the (promoted) replica."""
    replica = aioredis.Redis(port=servers.replica, decode_responses=True)
    try:
        return bool(await replica.exists(Keys(drive).entry(path)))
    finally:
        await replica.aclose()


async def test_a_drive_follows_a_sentinel_failover(tmp_path: Path) -> None:
    """After a failover, the drive leaves its old primary for the new one.

    The old primary takes writes until Sentinel demotes it (~10 s after a SENTINEL
    FAILOVER), then discards them: the drive asks the sentinels (`PRIMARY_CHECK_INTERVAL`)
    rather than wait for it. A write may fail once while Sentinel switches (as
    `DriveUnavailableError`), never twice in a row for long, and never with READONLY.
    """
    servers = SentinelServers(tmp_path / "servers")
    (tmp_path / "servers").mkdir()
    servers.start()
    sentinel = aioredis.Redis(port=servers.sentinel, decode_responses=True)
    try:
        async with Drive("lit://failover", root=tmp_path / "root", redis_url=servers.url) as drive:
            await drive.write_bytes("before.txt", b"1")
            wire = (await drive._connection()).connected.wire
            assert wire is not None
            await fail_over(sentinel, servers)
            await asyncio.sleep(PRIMARY_CHECK_INTERVAL)
            conn = await drive._connection()  # (a call: the sentinels are asked beside it)
            for _ in range(500):
                if "primary" not in conn.chores:
                    break
                await asyncio.sleep(0.01)
            for _ in range(100):
                try:
                    await drive.write_bytes("after.txt", b"2")
                    break
                except DriveUnavailableError:
                    await asyncio.sleep(0.1)
            assert await drive.read_bytes("after.txt") == b"2"
            role = await wire.call("ROLE")
            assert role[0] == "master" and wire.server == ("127.0.0.1", servers.replica)
            # Stored on the new primary (the old one would discard it once demoted).
            assert await on_the_replica(servers, "failover", "after.txt")
    finally:
        await sentinel.aclose()
        servers.stop()


async def test_a_drive_idle_across_a_sentinel_failover_makes_its_next_call_on_the_new_primary(
    tmp_path: Path,
) -> None:
    """A drive in use asks the sentinels beside its calls: one idle across the failover made
    its next call on the old primary (still taking writes, until Sentinel demotes it and
    discards them), seconds after the switch: a SyncDrive's write, whose disk work runs in
    its loop, before the check could. It asks before that call now."""
    servers = SentinelServers(tmp_path / "servers")
    (tmp_path / "servers").mkdir()
    servers.start()
    sentinel = aioredis.Redis(port=servers.sentinel, decode_responses=True)
    drive = SyncDrive("lit://idle", root=tmp_path / "root", redis_url=servers.url)
    try:
        await anyio.to_thread.run_sync(drive.write_bytes, "before.txt", b"1")
        await fail_over(sentinel, servers)
        await asyncio.sleep(drive_module._IDLE_FOR_A_FAILOVER)
        # Its first call since, no retry: stored on the new primary.
        await anyio.to_thread.run_sync(drive.write_bytes, "after.txt", b"2")
        assert await on_the_replica(servers, "idle", "after.txt")
    finally:
        await anyio.to_thread.run_sync(drive.close)
        await sentinel.aclose()
        servers.stop()


async def test_a_hung_sentinel_holds_up_no_call(tmp_path: Path) -> None:
    """The drive asks the sentinels beside its calls: one that does not answer (stopped)
    leaves the calls to the primary as they were, not each waiting for its timeout."""
    servers = SentinelServers(tmp_path / "servers")
    (tmp_path / "servers").mkdir()
    servers.start()
    try:
        async with Drive("lit://hung", root=tmp_path / "root", redis_url=servers.url) as drive:
            await drive.write_bytes("a.txt", b"a")
            sentinel = servers.procs[-1]
            os.kill(sentinel.pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(8):  # each call waited the sentinel's timeout (10 s)
                    for _ in range(4):
                        assert await drive.read_bytes("a.txt") == b"a"
                        await asyncio.sleep(PRIMARY_CHECK_INTERVAL)
            finally:
                os.kill(sentinel.pid, signal.SIGCONT)
    finally:
        servers.stop()


@pytest.mark.parametrize("sentinel", [False, True])
async def test_a_replica_refusing_a_write_is_a_lost_primary_under_sentinel(
    server: ServerProcess, other: aioredis.Redis, sentinel: bool
) -> None:
    """Sentinel's pool (``is_master``) reaching a replica: the primary moved, so reconnect.

    A primary demoted by a failover usually closes its connections (see the test above);
    one that does not answers writes with READONLY. Without Sentinel the error stays.
    """
    await raw(other, "REPLICAOF", "127.0.0.1", "1")  # a replica of nobody
    wire = make_wire(server)
    if sentinel:
        wire._pool.is_master = True  # type: ignore[attr-defined]  # as SentinelConnectionPool
    try:
        expected = redis.exceptions.ConnectionError if sentinel else redis.exceptions.ReadOnlyError
        with pytest.raises(expected):
            await wire.call("SET", "k", "v")
        assert ("not connected" in repr(wire)) is sentinel
    finally:
        await wire.aclose()


async def test_callers_waiting_for_a_connection_that_fails_fail_with_it(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung server: each caller queued behind a connection attempt tried its own once
    that one failed, each waiting its whole timeout in turn (the last of 10 calls of a
    drive failed after 10 timeouts, where an operation waits one). One attempt fails them
    all; the next call tries again, and connects once the server answers."""
    client = aioredis.Redis.from_url(
        server.url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    wire = Wire(client.connection_pool, timeout=0.5)
    attempts = 0
    make_connection = client.connection_pool.make_connection

    def counted() -> Any:
        nonlocal attempts
        attempts += 1
        return make_connection()  # type: ignore[no-untyped-call]

    monkeypatch.setattr(client.connection_pool, "make_connection", counted)
    assert server.proc is not None
    try:
        assert await wire.call("PING") == "PONG"
        os.kill(server.proc.pid, signal.SIGSTOP)  # accepts, answers nothing
        try:
            wire.disconnect("as after a timed-out reply")
            attempts = 0
            outcomes = await asyncio.gather(
                *(wire.call("PING") for _ in range(6)), return_exceptions=True
            )
            lost = redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
            assert all(isinstance(o, lost)
                       for o in outcomes), outcomes  # fmt: skip
            assert attempts == 1
            kept = wire._last_failure  # (a copy: the failed caller's frames are not kept)
            assert kept is not None and kept.__traceback__ is None
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await wire.call("PING") == "PONG"  # (a new call tries anew)
        assert attempts == 2
    finally:
        await wire.aclose()
        await client.aclose()

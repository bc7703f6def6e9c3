"""The drive's Redis connections: commands packed in C and small writes without a timeout
task must send exactly what redis-py would, and still time out against a hung server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from asyncdrive import Drive
from asyncdrive._client import _UNBLOCKABLE_WRITE, _lean, _LeanCommands, connect

from .servers import ServerProcess

ARGUMENTS: list[tuple[Any, ...]] = [
    ("GET", "key"),
    ("CONFIG GET", "maxmemory"),  # two words: sent as two arguments
    (b"CLIENT LIST",),
    ("SET", "kéy €", b"\x00\xff bytes", "", " "),
    ("ZADD", "z", 1.5, "a", -0.1, "b", 1e300, "c", float("inf"), "d"),
    ("HSET", "h", "n", 0, "m", -7, "big", 2**70),
    ("SET", "view", memoryview(b"abc"), bytearray(b"def")),
    ("EVALSHA", "0" * 40, 3, *(f"k{i}" for i in range(3)), *(str(i) for i in range(40))),
]


@pytest.fixture
async def lean_client(redis_url: str) -> Any:
    connected = await connect(redis_url, timeout=10)
    try:
        yield connected.client
    finally:
        await connected.aclose()


def connection_classes(client: Any) -> list[type]:
    """The classes of the connections ``client`` opens: its pool's, or its Cluster nodes'."""
    if isinstance(client, RedisCluster):
        return [node.connection_class for node in client.get_nodes()]
    return [client.connection_pool.connection_class]


@pytest.mark.parametrize("args", ARGUMENTS, ids=lambda a: repr(a[0]))
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    lean, plain = _lean(Connection)(), Connection()
    assert b"".join(lean.pack_command(*args)) == b"".join(plain.pack_command(*args))
    pipeline = [args, ("PING",), args]
    assert b"".join(lean.pack_commands(pipeline)) == b"".join(plain.pack_commands(pipeline))


def test_unencodable_arguments_fail_as_in_redis_py() -> None:
    lean = _lean(Connection)()
    unencodable: list[Any] = [True, None, object()]
    for value in unencodable:
        with pytest.raises(redis.exceptions.DataError):
            lean.pack_command("SET", "k", value)
    with pytest.raises(UnicodeEncodeError):
        lean.pack_command("SET", "k", "\udc80")


async def test_every_kind_of_server_gets_lean_connections(lean_client: Any) -> None:
    await lean_client.ping()  # a Cluster has found its nodes by now
    classes = connection_classes(lean_client)
    assert classes and all(issubclass(c, _LeanCommands) for c in classes), classes


async def test_values_round_trip(lean_client: Any) -> None:
    key = "{test_client}:h"
    values = {"unicode": "kéy €", "empty": "", "int": 2**62, "float": 0.1, "spaces": "a b"}
    try:
        await lean_client.delete(key)
        await lean_client.hset(key, mapping=values)
        assert await lean_client.hgetall(key) == {k: str(v) for k, v in values.items()}
        async with lean_client.pipeline(transaction=True) as pipe:
            pipe.hget(key, "unicode").hlen(key)
            assert await pipe.execute() == ["kéy €", len(values)]
    finally:
        await lean_client.delete(key)


@pytest.fixture
def server(private_server: ServerProcess) -> Iterator[ServerProcess]:
    private_server.start()
    yield private_server


@pytest.mark.parametrize("size", [100, 4 * 1024 * 1024])
async def test_hung_server_times_out_on_small_and_large_writes(
    server: ServerProcess, tmp_path: Path, size: int
) -> None:
    """A small command's write skips the timeout, a large one keeps it: both time out.

    4 MiB cannot fit in the socket's buffers of a stopped server, so its write blocks; if
    it had no timeout, this test would hang (and fail at pytest's timeout).
    """
    connected = await connect(server.url, timeout=0.5)
    client = connected.client
    try:
        await client.ping()  # connected before the server stops
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.set("k", "x" * size)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await client.ping()  # a new connection: the timed-out one was dropped
        await client.set("k", "y" * size)
        assert await client.strlen("k") == size
        assert size <= _UNBLOCKABLE_WRITE or size > 1024 * 1024  # both paths are covered
    finally:
        await connected.aclose()


async def test_drive_connections_are_lean(tmp_path: Path, redis_url: str) -> None:
    async with Drive("lit://lean", root=tmp_path / "root", redis_url=redis_url) as drive:
        await drive.write_bytes("a.txt", b"x")
        assert await drive.read_bytes("a.txt") == b"x"
        client = (await drive._connection()).connected.client
        assert all(issubclass(c, _LeanCommands) for c in connection_classes(client))


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_drive_works_over_either_protocol(
    server: ServerProcess, tmp_path: Path, protocol: int
) -> None:
    """RESP3 is redis-py's default; a URL may ask for RESP2, whose replies differ in shape."""
    url = f"{server.url}{'&' if '?' in server.url else '?'}protocol={protocol}"
    async with Drive("lit://resp", root=tmp_path / "root", redis_url=url) as drive:
        conn = await drive._connection()
        assert conn.connected.wire is not None
        await drive.write_bytes("a/b.txt", b"x")
        await drive.write_bytes("a/b.txt", b"yz")
        info = await drive.info("a/b.txt")
        assert (info.size, info.version) == (2, 2)
        assert await drive.read_bytes("a/b.txt") == b"yz"
        assert await drive.list("a") == ["a/b.txt"]
        await drive.delete("a/b.txt")
        assert not await drive.exists("a/b.txt")
        changes = []
        async with drive.watch(since="0", timeout=10) as feed:
            async for event in feed:
                changes.append((event.change.value, event.path, event.version, event.size))
                if len(changes) == 3:
                    break
        assert changes == [
            ("added", "a/b.txt", 1, 1),
            ("modified", "a/b.txt", 2, 2),
            ("deleted", "a/b.txt", 2, 2),
        ]
        hello = await conn.connected.wire.call("HELLO")
        assert (hello["proto"] if protocol == 3 else hello[hello.index("proto") + 1]) == protocol

"""Connecting to Redis: a standalone server, a Cluster (detected), or Sentinel.

URLs:

- ``redis://[user:password@]host:port[/db]``, ``rediss://...`` (TLS), ``unix:///path.sock``:
  a standalone server, or any node of a Redis Cluster (detected with ``INFO cluster``);
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` (or
  ``rediss+sentinel://``): the primary that Sentinel names for ``service``, followed through
  failovers. ``?sentinel_password=...`` authenticates to the sentinels themselves.

Every drive's keys share one hash tag, so on a Cluster a drive lives in one slot and its
multi-key scripts and transactions run on one node.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ._config import redact_url
from ._exceptions import InvalidConfigError
from ._tasks import to_its_end
from ._wire import Wire, WirePool

RedisClient: TypeAlias = aioredis.Redis | RedisCluster

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

logger = logging.getLogger("asyncdrive")

#: A lost connection, or a server out of reach (redis-py's, or a timeout of our own): the
#: command may or may not have run.
CONNECTION_LOST = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)
#: What redis-py's cluster client raises, not an error reply, where a drive's slot moves
#: (resharding, failover) faster than it follows it: "TTL exhausted", a slot not covered.
CLUSTER_MOVING = (redis.exceptions.ClusterError, redis.exceptions.RedisClusterException)
#: Error replies of a cluster whose slot moves (resharding) or that fails over: passing.
CLUSTER_PASSING = (
    redis.exceptions.AskError,  # (and MovedError)
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


@dataclass
class Connected:
    """A client for the drive's server, and whatever else must be closed with it."""

    client: RedisClient
    kind: str  # "standalone", "cluster" or "sentinel"
    others: list[aioredis.Redis] = field(default_factory=list)
    #: The connection for short commands (see `Wire`); None on a Cluster, where redis-py's
    #: client routes each command to its node.
    wire: Wire | None = None
    #: The connections for blocking reads (watches), as wires; None on a Cluster.
    readers: WirePool | None = None
    #: The classes of the connections of the client (and of its sentinels), its own: see
    #: `lean_connections`.
    connections: list[type[_LeanCommands]] = field(default_factory=list)

    async def follow_primary(self) -> None:
        """Under Sentinel: drop the connections to a server the sentinels no longer name.

        After a failover the old primary takes writes until Sentinel demotes it (about 10 s
        after a ``SENTINEL FAILOVER``), then discards them as it becomes a replica of the
        new one: the connections must not wait for it to close them. Each reconnects to the
        primary named now at its next command. (Sentinels that cannot answer: no change.)
        """
        if self.kind != "sentinel":
            return
        pool: Any = cast(aioredis.Redis, self.client).connection_pool  # (Sentinel's)
        try:
            host, port = await pool.get_master_address()  # (drops its own idle connections)
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.debug("sentinels did not name the primary (%s)", exc)
            return
        reason = f"Sentinel names another primary ({host}:{port}): a failover"
        if self.wire is not None and self.wire.server not in (None, (host, int(port))):
            self.wire.disconnect(reason)
        if self.readers is not None:
            self.readers.disconnect_unless((host, int(port)), reason)

    async def aclose(self) -> None:
        """Close the client, the wires and the sentinel connections, if any.

        None of the client's connections opens again after (see `_LeanCommands._connect`).
        """
        for connections in self.connections:
            connections.client_closed = True
        if self.readers is not None:
            await self.readers.aclose()
        if self.wire is not None:
            await self.wire.aclose()
        await self.client.aclose()
        if isinstance(self.client, RedisCluster):
            # redis-py closes nothing of a Cluster client whose first topology read did
            # not end (cancelled, say): the connections it opened for it, too.
            manager = self.client.nodes_manager
            await manager.aclose("startup_nodes")
            await manager.aclose()
        for other in self.others:
            await other.aclose()


def _options(timeout: float) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No silent retries: a command retried after a timeout may run twice, and a commit
        # run twice would be refused as a conflict after it succeeded. A failure surfaces
        # (as DriveUnavailableError), and the next call reconnects.
        "retry": Retry(NoBackoff(), 0),
    }


#: A command at most this long is written without a timeout when nothing waits to be sent
#: before it: it fits below the transport's high-water mark (64 KiB), so its write cannot block.
_UNBLOCKABLE_WRITE = 16 * 1024


_PACKED_AS_IS = (bytes, str)


class _LeanCommands(AbstractConnection):
    """Cheaper commands for redis-py's asyncio connections: what a drive call pays per command.

    Mixed in before one of redis-py's connection classes (see `lean_connections`), it
    changes no behaviour, only two costs measured on each command (Python 3.11):

    - **Packing** in C, with ``hiredis.pack_command``, as redis-py's blocking client does:
      ~5 us instead of ~45 us for the ~30 arguments of a put's script call.
    - **Writing** a small command, when nothing is queued before it, without
      ``asyncio.wait_for``: that write cannot block (it stays below the transport's
      high-water mark, so ``drain()`` returns at once), and the timeout cost a task per
      command (~40 us). A larger write, or one behind a backlog, keeps the socket
      timeout; every reply is still awaited with it, so a hung server still times out.

    Each client has a subclass of its own (`lean_connections`), which its close marks
    (`client_closed`): its connections never connect again. redis-py's clients reconnect
    at the next command, and its cluster client even at a command already under way (a
    watch's read, from a new pipeline task), whose connection then stayed open after the
    drive's close, until collected with a ResourceWarning.
    """

    #: Set when the client whose connections these are is closed (`Connected.aclose`).
    client_closed: ClassVar[bool] = False

    def _refuse_if_client_closed(self) -> None:
        if self.client_closed:
            raise redis.exceptions.ConnectionError("The drive's connection was closed")

    async def connect(self) -> None:
        # (First: a Sentinel's connection asks the sentinels where the primary is, before
        # it connects to it.)
        self._refuse_if_client_closed()
        await super().connect()  # type: ignore[no-untyped-call]

    async def _connect(self) -> None:
        self._refuse_if_client_closed()
        await super()._connect()  # type: ignore[safe-super,no-untyped-call]  # (Connection's)
        if self.client_closed:  # closed as it connected: its close missed this one
            await self.disconnect(nowait=True)
            self._refuse_if_client_closed()

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "CONFIG GET" is two words, as redis-py sends it
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        # hiredis encodes str as UTF-8, strictly, as redis-py's default Encoder does (and
        # `_options` changes neither); everything else goes through that Encoder, for
        # redis-py's exact bytes and DataErrors.
        encode: Callable[[Any], bytes] = self.encoder.encode
        packed = tuple(a if type(a) in _PACKED_AS_IS else bytes(encode(a)) for a in args)
        return [hiredis.pack_command(packed)]  # type: ignore[arg-type]  # (stub: a 1-tuple)

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        timeout = self.socket_timeout
        writer = self._writer
        if (
            timeout
            and writer is not None
            and self.is_connected
            and isinstance(command, list | bytes)
            and (len(command) if isinstance(command, bytes) else sum(map(len, command)))
            <= _UNBLOCKABLE_WRITE
            and writer.transport.get_write_buffer_size() == 0
        ):
            self.socket_timeout = None  # this connection serves one command at a time
            try:
                await super().send_packed_command(command, check_health)
            finally:
                self.socket_timeout = timeout
            return
        await super().send_packed_command(command, check_health)

    async def disconnect(self, nowait: bool = False, *args: Any, **kwargs: Any) -> None:
        """Close the connection; one dropped after a failure (``nowait``) at once.

        redis-py closes the transport, which first sends what is left of its write
        buffer: from a hung server (a write that timed out), never, and the socket stayed
        open, to be collected with a ResourceWarning. Its unsent bytes are dropped here.
        """
        writer = self._writer
        if nowait and writer is not None:
            writer.transport.abort()
        await super().disconnect(nowait, *args, **kwargs)  # (redis-py 5.2 has no others)


_lean_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}
ConnectionT = TypeVar("ConnectionT", bound=AbstractConnection)


def _lean(connection_class: type[ConnectionT]) -> type[ConnectionT]:
    """Return the `_LeanCommands` subclass of ``connection_class`` (one per class)."""
    if issubclass(connection_class, _LeanCommands):
        return connection_class
    if connection_class not in _lean_classes:
        name = f"Lean{connection_class.__name__}"
        _lean_classes[connection_class] = type(name, (_LeanCommands, connection_class), {})
    return cast(type[ConnectionT], _lean_classes[connection_class])


def lean_connections(client: RedisClient) -> type[_LeanCommands]:
    """Make the connections ``client`` opens from now on `_LeanCommands`; return their class.

    A standalone or Sentinel client's pool, or a Cluster's nodes (those it starts from, and
    those it discovers later). Call it before the client opens a connection. The class is
    this client's own: set its ``client_closed`` once the client is closed.
    """
    pool: Any = None if isinstance(client, RedisCluster) else client.connection_pool
    if pool is None:
        manager = cast(RedisCluster, client).nodes_manager
        base = manager.connection_kwargs.get("connection_class", Connection)
    else:
        base = pool.connection_class
    lean = _lean(base)
    own: type[_LeanCommands] = type(lean.__name__, (lean,), {})
    if pool is None:
        manager.connection_kwargs["connection_class"] = own
        for node in manager.startup_nodes.values():
            node.connection_class = cast(Any, own)  # (a Connection subclass, made here)
    else:
        pool.connection_class = own
    return own


def refusal_at_accept(url: str, timeout: float = 0.25) -> str | None:
    """Return the error a server greets a new connection with, if any ("max number of ...").

    A server serving its ``maxclients`` already, say, answers a new connection with an error
    and closes it, before any command: a client whose first command meets the closed socket
    sees only a lost connection. This connects once more and reads the greeting (None where
    the server says nothing within ``timeout``, or is not reached: plain ``redis://`` and
    ``unix://`` URLs only).
    """
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX)
        elif parts.scheme == "redis":
            address = (parts.hostname or "127.0.0.1", parts.port or 6379)
            sock = socket.create_connection(address, timeout)
        else:
            return None
        with sock:
            if parts.scheme == "unix":
                sock.settimeout(timeout)
                sock.connect(parts.path)
            greeting = sock.recv(256)
    except (OSError, ValueError):  # (a timeout: said nothing; ValueError: a bad port)
        return None
    line = greeting.partition(b"\r\n")[0].decode(errors="replace")
    return line[1:].strip() or None if line.startswith("-") else None


async def connect(url: str, *, timeout: float) -> Connected:
    """Return a client for ``url``, connected (raises redis-py's errors if it cannot be)."""
    scheme = url.partition("://")[0].lower()
    if scheme in SENTINEL_SCHEMES:
        return await _connect_sentinel(url, timeout)
    if scheme in ("redis", "rediss"):
        # redis-py reads '/abc' as database 0, and '/1/2' as 12: say so instead.
        database = urlsplit(url).path.strip("/")
        if database and not database.isdigit():
            raise _bad_url(url, ValueError(f"{database!r} is not a database number"))
    try:
        client = aioredis.Redis.from_url(url, **_options(timeout))
    except ValueError as exc:
        raise _bad_url(url, exc) from None
    connections = lean_connections(client)
    # (Closed to their end, whatever cancels the caller: a second cancel, as a SyncDrive's
    # close sends every 50 ms, cut the close short, and left connections open.)
    try:
        info = await client.info("cluster")
    except BaseException:
        await to_its_end(client.aclose())
        raise
    if not info.get("cluster_enabled"):
        return Connected(client, "standalone", connections=[connections], **_wires(client, timeout))
    await to_its_end(client.aclose())
    cluster = GatedCluster.from_url(url, max_connections=2**31, **_options(timeout))
    connected = Connected(cluster, "cluster", connections=[lean_connections(cluster)])
    try:
        await cluster.initialize()
    except BaseException:
        await to_its_end(connected.aclose())
        raise
    return connected


#: How many commands a drive's Cluster client sends at once (`GatedCluster`).
CLUSTER_COMMANDS_AT_ONCE = 8


class GatedCluster(RedisCluster):
    """redis-py's cluster client, at most `CLUSTER_COMMANDS_AT_ONCE` commands at once.

    Each command holds a connection of its node's pool while it runs, and the pool refuses
    one more than its ``max_connections`` (100 by default) instead of waiting: 300 lookups
    at once failed, the drive "unreachable"; and each connection it opens stays open, idle,
    after a burst. Commands and pipelines wait their turn here instead (``gate``), and the
    pools have no bound (as redis-py's standalone pools), for what runs beside: the
    watches' blocking reads (`waiting_pipeline`), which the gate must not hold up. A few
    commands at once keep the drive's node busy.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Semaphore(CLUSTER_COMMANDS_AT_ONCE)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.gate:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        """Return a pipeline whose execution takes a turn, as a command does."""
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # (which refuses it)
        # (redis-py's typing takes a property of its event dispatcher for abstract.)
        return _GatedPipeline(self, transaction)  # type: ignore[abstract]

    def waiting_pipeline(self) -> ClusterPipeline:
        """Return a pipeline that takes no turn: for commands that block (``XREAD BLOCK``)."""
        return ClusterPipeline(self, False)  # type: ignore[abstract]


class _GatedPipeline(ClusterPipeline):
    """A `GatedCluster`'s pipeline (its multi-key commands', ``exists(a, b)``, too)."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        async with cast(GatedCluster, self.cluster_client).gate:
            return await super().execute(raise_on_error, allow_redirections)


async def _connect_sentinel(url: str, timeout: float) -> Connected:
    try:
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username, _, password = userinfo.partition(":")
        addresses = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            addresses.append((name or "127.0.0.1", int(port or 26379)))
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            raise ValueError("it names no service: redis+sentinel://host:port/service")
        service = segments[0]
        db = int(segments[1]) if len(segments) > 1 else 0
    except (ValueError, IndexError) as exc:
        raise _bad_url(url, exc) from None
    query = dict(parse_qsl(parts.query))
    options = _options(timeout)
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    if "sentinel_password" in query:
        sentinel_options["password"] = query["sentinel_password"]
    sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call,unused-ignore]
    client = sentinel.master_for(
        service,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme.lower().startswith("rediss"),
    )
    connected = Connected(
        client,
        "sentinel",
        list(sentinel.sentinels),
        # (The sentinels' too: a primary's connection asks them first where it is.)
        connections=[lean_connections(c) for c in (client, *sentinel.sentinels)],
        **_wires(client, timeout),
    )
    try:
        await client.ping()
    except BaseException:
        await to_its_end(connected.aclose())
        raise
    return connected


def _wires(client: aioredis.Redis, timeout: float) -> dict[str, Any]:
    """Make the wire for short commands, and the pool of wires for blocking reads."""
    pool = client.connection_pool
    return {"wire": Wire(pool, timeout=timeout), "readers": WirePool(pool, timeout=timeout)}


def _bad_url(url: str, exc: BaseException) -> InvalidConfigError:
    return InvalidConfigError(
        f"Invalid Redis URL {redact_url(url)!r} ({exc}). Use redis://[user:password@]host:port"
        "[/db], rediss://..., unix:///path.sock, or "
        "redis+sentinel://host:port[,host:port]/service[/db]."
    )

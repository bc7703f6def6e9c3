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

from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ._config import redact_url
from ._exceptions import InvalidConfigError

RedisClient: TypeAlias = aioredis.Redis | RedisCluster

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass
class Connected:
    """A client for the drive's server, and whatever else must be closed with it."""

    client: RedisClient
    kind: str  # "standalone", "cluster" or "sentinel"
    others: list[aioredis.Redis] = field(default_factory=list)

    async def aclose(self) -> None:
        """Close the client and the sentinel connections, if any."""
        await self.client.aclose()
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


async def connect(url: str, *, timeout: float) -> Connected:
    """Return a client for ``url``, connected (raises redis-py's errors if it cannot be)."""
    scheme = url.partition("://")[0].lower()
    if scheme in SENTINEL_SCHEMES:
        return await _connect_sentinel(url, timeout)
    try:
        client = aioredis.Redis.from_url(url, **_options(timeout))
    except ValueError as exc:
        raise _bad_url(url, exc) from None
    try:
        info = await client.info("cluster")
    except BaseException:
        await client.aclose()
        raise
    if not info.get("cluster_enabled"):
        return Connected(client, "standalone")
    await client.aclose()
    cluster = RedisCluster.from_url(url, **_options(timeout))
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return Connected(cluster, "cluster")


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
        service = segments[0]
        db = int(segments[1]) if len(segments) > 1 else 0
    except (ValueError, IndexError) as exc:
        raise _bad_url(url, exc) from None
    query = dict(parse_qsl(parts.query))
    options = _options(timeout)
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    if "sentinel_password" in query:
        sentinel_options["password"] = query["sentinel_password"]
    sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        service,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme.lower().startswith("rediss"),
    )
    connected = Connected(client, "sentinel", list(sentinel.sentinels))
    try:
        await client.ping()
    except BaseException:
        await connected.aclose()
        raise
    return connected


def _bad_url(url: str, exc: BaseException) -> InvalidConfigError:
    return InvalidConfigError(
        f"Invalid Redis URL {redact_url(url)!r} ({exc}). Use redis://[user:password@]host:port"
        "[/db], rediss://..., unix:///path.sock, or "
        "redis+sentinel://host:port[,host:port]/service[/db]."
    )

"""Real servers for the tests, from the binary the embedded default runs.

`ServerProcess` is one server on a unix socket; `ClusterServers` a 3-node Redis Cluster and
`SentinelServers` a primary, a replica and a sentinel, on loopback ports. All of them stop
their processes in `stop`.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.sentinel

from asyncdrive import server_binary


def clients(url: str) -> list[dict[str, Any]]:
    """Return the clients of every server a drive at ``url`` may use, each with its ``node``.

    One server; each node of a Cluster; the primary a Sentinel names
    (``redis+sentinel://host:port/service``). Client ids are each node's own.
    """
    if url.startswith("redis+sentinel://"):
        where = urlsplit(url)
        sentinel = redis.sentinel.Sentinel(
            [(where.hostname or "localhost", where.port or 26379)], socket_timeout=5
        )
        primary = sentinel.master_for(where.path.strip("/"), socket_timeout=5)
        try:
            return [dict(c, node="primary") for c in primary.client_list()]
        finally:
            primary.close()
            for known in sentinel.sentinels:
                known.close()
    client = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
    try:
        if not client.info("cluster").get("cluster_enabled"):
            return [dict(c, node=url) for c in client.client_list()]
    finally:
        client.close()
    cluster = redis.RedisCluster.from_url(url, socket_timeout=5, decode_responses=True)
    try:
        return [
            dict(c, node=node.name)
            for node in cluster.get_nodes()  # type: ignore[no-untyped-call]
            for c in cluster.get_redis_connection(node).client_list()
        ]
    finally:
        cluster.close()


def blocked_xreads(url: str) -> set[str]:
    """Clients blocked in XREAD on the servers of ``url``: how a watch (and a waiting get)
    waits. Each as ``node/id``."""
    return {
        f"{c['node']}/{c['id']}"
        for c in clients(url)
        if "b" in c.get("flags", "") and c.get("cmd") == "xread"
    }


def wait_for(url: str, timeout: float = 15.0) -> None:
    """Wait until the server at ``url`` answers PING."""
    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            if client.ping():
                return
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # A server just started may take longer than the 1 s to answer on a busy
            # machine (redis-py's TimeoutError is no ConnectionError): ask again.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
        finally:
            client.close()


def command(client: redis.Redis, *args: Any) -> Any:
    """Send a raw command (the typed helpers do not cover CLUSTER and SENTINEL)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """Loopback ports that are free, and whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 40000)
        if port not in ports and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [server_binary(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=10)
    procs.clear()


class ServerProcess:
    """A server of our own, which a test may kill and restart.

    It listens on a unix socket in ``folder``, or with ``tcp=True`` on a loopback port. Its
    append-only file is fsynced ``persistence`` ("everysec" or "always"); None keeps no
    persistence, so a restart loses everything.
    """

    def __init__(
        self,
        folder: Path,
        *,
        persistence: str | None = "everysec",
        tcp: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.sock = folder / "s.sock"
        self.extra_args = list(extra_args)
        if tcp:
            self.port = free_ports(1)[0]
            self.listen = ["--bind", "127.0.0.1", "--port", str(self.port)]
            self.url = f"redis://127.0.0.1:{self.port}"
        else:
            self.listen = ["--port", "0", "--unixsocket", str(self.sock)]
            self.url = f"unix://{self.sock}"
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", self.persistence]
            if self.persistence
            else ["--appendonly", "no"]
        )
        self.proc = _spawn(
            [*self.listen, "--dir", str(self.folder), "--save", "", *persistence, *self.extra_args]
        )
        try:
            wait_for(self.url)
        except BaseException:
            self.kill()  # never left running when its start failed
            raise

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop([self.proc])
            self.proc = None


class ClusterServers:
    """Three primaries forming a Redis Cluster, each with a third of the slots."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = free_ports(3)
        self.url = f"redis://127.0.0.1:{self.ports[0]}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for port in self.ports:
            self.procs.append(
                _spawn(
                    [
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--dir",
                        str(self.folder),
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appenddirname",
                        f"appendonly-{port}",
                    ]
                )
            )
        clients = [redis.Redis(port=port, decode_responses=True) for port in self.ports]
        try:
            for client in clients:
                wait_for(f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}")
            bounds = [0, 5461, 10923, 16384]
            for n, client in enumerate(clients):
                command(client, "CLUSTER", "ADDSLOTSRANGE", bounds[n], bounds[n + 1] - 1)
            for port in self.ports[1:]:
                command(clients[0], "CLUSTER", "MEET", "127.0.0.1", port)
            deadline = time.monotonic() + 30
            while not all(
                "cluster_state:ok" in command(c, "CLUSTER", "INFO")
                and len(command(c, "CLUSTER", "NODES").splitlines()) == 3
                for c in clients
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("the test cluster did not come up within 30 s")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        _stop(self.procs)


class SentinelServers:
    """A primary, a replica of it, and one sentinel watching them as ``mymaster``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.primary, self.replica, self.sentinel = free_ports(3)
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel}/mymaster"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
        self.procs.append(_spawn(["--port", str(self.primary), "--dir", str(self.folder), *common]))
        wait_for(f"redis://127.0.0.1:{self.primary}")
        replica_dir = self.folder / "replica"
        replica_dir.mkdir()
        self.procs.append(
            _spawn(
                [
                    "--port",
                    str(self.replica),
                    "--dir",
                    str(replica_dir),
                    *common,
                    "--replicaof",
                    "127.0.0.1",
                    str(self.primary),
                ]
            )
        )
        wait_for(f"redis://127.0.0.1:{self.replica}")
        replica = redis.Redis(port=self.replica, decode_responses=True)
        try:  # synced: a replica promoted before its first sync would hold nothing
            deadline = time.monotonic() + 30
            while command(replica, "INFO", "replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise TimeoutError("the test replica did not sync within 30 s")
                time.sleep(0.05)
        finally:
            replica.close()
        config = self.folder / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.primary} 1\n"
            "sentinel down-after-milliseconds mymaster 2000\n"
        )
        self.procs.append(_spawn([str(config), "--sentinel"]))
        wait_for(f"redis://127.0.0.1:{self.sentinel}")
        sentinel = redis.Redis(port=self.sentinel, decode_responses=True)
        try:
            deadline = time.monotonic() + 30
            while command(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster") is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the test sentinel did not find its primary within 30 s")
                time.sleep(0.05)
        finally:
            sentinel.close()

    def stop(self) -> None:
        _stop(self.procs)

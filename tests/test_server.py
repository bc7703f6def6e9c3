"""The embedded server: where it listens."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncdrive
from asyncdrive import SyncDrive


@pytest.fixture(autouse=True)
def embedded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Redis URL from the environment: the drives here use the embedded server."""
    monkeypatch.delenv("ASYNCDRIVE_REDIS_URL", raising=False)
    yield


def test_long_root_listens_on_loopback_tcp(tmp_path: Path, drive_id: str) -> None:
    # A unix socket path is limited to about 100 bytes: under a deeper root, loopback TCP.
    root = tmp_path / ("r" * 60) / ("s" * 60)
    try:
        with SyncDrive(drive_id, root=root) as drive:
            drive.write_bytes("a.txt", b"over tcp")
        url = asyncdrive.server_url(root)
        assert url is not None and url.startswith("redis://127.0.0.1:"), url
        with SyncDrive(drive_id, root=root) as drive:
            assert drive.read_bytes("a.txt") == b"over tcp"
    finally:
        asyncdrive.stop_server(root)
    assert asyncdrive.server_url(root) is None


def test_short_root_listens_on_a_unix_socket_under_it(tmp_path: Path, drive_id: str) -> None:
    root = Path("/tmp") / tmp_path.name  # short enough for a socket path
    try:
        with SyncDrive(drive_id, root=root) as drive:
            drive.write_bytes("a.txt", b"x")
        assert asyncdrive.server_url(root) == f"unix://{root.resolve()}/server/valkey.sock"
    finally:
        asyncdrive.stop_server(root)
        shutil.rmtree(root, ignore_errors=True)

"""The command line, through the real entry point (``python -m asyncdrive``) in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

import asyncdrive


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncdrive", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_server_start_status_stop(tmp_path: Path) -> None:
    root = tmp_path / "r"
    try:
        status = cli("server", "status", "--root", str(root))
        assert (status.returncode, status.stdout.strip()) == (3, "not running")
        started = cli("server", "start", "--root", str(root))
        assert started.returncode == 0, started.stderr
        url = asyncdrive.server_url(root)
        assert url is not None
        assert started.stdout.strip() == f"running: {url}"
        again = cli("server", "start", "--root", str(root))
        assert again.stdout == started.stdout  # reused, not started twice
        stopped = cli("server", "stop", "--root", str(root))
        assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped")
        assert asyncdrive.server_url(root) is None
        assert cli("server", "stop", "--root", str(root)).stdout.strip() == "not running"
    finally:
        asyncdrive.stop_server(root)


def test_help_and_bad_usage() -> None:
    helped = cli("--help")
    assert helped.returncode == 0
    assert "server" in helped.stdout
    bad = cli("server", "explode")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr


def test_rebuild_index_and_gc(env: dict[str, str], root: Path, redis_url: str) -> None:
    names = ["lit://cli_a", "lit://cli_b"]
    for drive_id in names:
        with asyncdrive.SyncDrive(drive_id) as drive:
            drive.write_bytes("x/1.bin", b"1")
            drive.write_bytes("x/2.bin", b"2")
    client = redis.Redis.from_url(redis_url)
    try:
        for name in ("cli_a", "cli_b"):
            client.delete(*client.keys(f"asyncdrive:{{{name}}}:*"))
    finally:
        client.close()
    listed = cli("rebuild-index", "lit://cli_a")
    assert (listed.returncode, listed.stdout) == (0, "lit://cli_a: 2 files indexed\n")
    every = cli("rebuild-index", "--all")
    assert every.stdout.splitlines() == [
        "lit://cli_a: 2 files indexed",
        "lit://cli_b: 2 files indexed",
    ]
    with asyncdrive.SyncDrive("lit://cli_b") as drive:
        assert drive.list("x") == ["x/1.bin", "x/2.bin"]
    cleaned = cli("gc", "lit://cli_a", "--grace", "0")
    assert cleaned.returncode == 0
    assert "GcReport(uploads_removed=0" in cleaned.stdout
    both = cli("gc", "lit://cli_a", "--all")
    assert (both.returncode, both.stderr.strip()) == (
        1,
        "asyncdrive: error: name one drive (lit://<name>) or pass --all, not both.",
    )
    bad = cli("rebuild-index", "s3://nope")
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert "lit://" in bad.stderr

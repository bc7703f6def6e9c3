"""The ``asyncdrive server`` commands, through the real entry point in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

"""The benchmark suite still runs: ``python -m bench --quick`` end to end, speed never asserted."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

from bench import watch_latency

from .conftest import REPO


def test_watch_latency_quick_run_prints_a_row_per_case() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "watch_latency", "--no-write"],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next((line for line in lines if line.startswith("case ")), None)
    assert header is not None, proc.stdout
    assert all(word in header for word in ("p50 µs", "p99 µs", "min µs", "max µs")), header
    for case in watch_latency.CASES:
        assert any(line.startswith(case.label + " ") for line in lines), case.label
    assert "wrote" not in proc.stdout  # --no-write
    # The private server is stopped and its folder removed.
    found = re.search(r"^server: unix://(\S+)", proc.stdout, re.MULTILINE)
    assert found is not None, proc.stdout
    sock = found.group(1)
    assert not Path(sock).parent.exists()
    assert not any(sock.encode() in cmdline for cmdline in _command_lines())


def _command_lines() -> list[bytes]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # the process ended meanwhile
            found.append(path.read_bytes())
    return found

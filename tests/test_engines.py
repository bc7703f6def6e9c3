"""The functional suite again, on a real 3-node Redis Cluster and a Sentinel-managed primary.

Each kind runs in a pytest of its own (``--server-kind``), which starts the servers from the
same binary as the embedded default, on loopback ports.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

FUNCTIONAL = [
    "tests/test_drive.py",
    "tests/test_watch.py",
    "tests/test_recovery.py",
    "tests/test_files.py",
    "tests/test_fsspec.py",
    # (Its tests of cancelled lock releases, and of 300 calls at once, failed on a Cluster.)
    "tests/test_concurrency.py",
    "tests/test_sync.py",
    # (The command line's rebuild-index --all and gc --all look through every node.)
    "tests/test_cli.py",
    "tests/test_processes.py",
]


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
def test_functional_suite_passes_on(kind: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--server-kind", kind,
         "-m", "not slow", "-k", "not many_writers", *FUNCTIONAL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary

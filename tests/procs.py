"""Helpers for tests that run real processes: start, read, stop."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path


def spawn(
    code: str, env: dict[str, str], cwd: Path, *, warnings_as_errors: bool = True
) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter, its stdout and stderr piped.

    ``warnings_as_errors=False`` keeps the default warning filters, as users run scripts.
    """
    flags = ["-W", "error"] if warnings_as_errors else []
    return subprocess.Popen(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    """Read one line of the process's stdout; fail with its stderr if it ended first."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"process ended early ({proc.returncode}):\n{err}")
    return line.strip()


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[str, str]:
    """Wait for ``proc`` to end; return its stdout and stderr.

    Past ``timeout`` it is killed (and reaped), and `subprocess.TimeoutExpired` raised.
    """
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    """Kill whichever of ``procs`` still run, all of them first, then reap them."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

"""The benchmark suite still runs: ``python -m bench --quick`` end to end, speed never asserted."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def _quick_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-write", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=240,
        check=False,
    )


def test_large_files_quick_run_prints_a_row_per_operation() -> None:
    from bench import large_files

    proc = _quick_bench("--only", "large_files")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for label in large_files.OPERATIONS.values():
        assert any(line.startswith(label + " ") for line in lines), label
    assert "peak memory growth, MiB" in proc.stdout
    assert "wrote" not in proc.stdout


def test_small_files_quick_run_prints_a_row_per_case_and_operation() -> None:
    from bench import small_files

    proc = _quick_bench("--only", "small_files")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for op in small_files.OPS:
        assert any(line.startswith(f"{op} of {small_files.QUICK_FILES} files") for line in lines)
    for case in small_files.CASES:
        assert sum(line.startswith(case.label + " ") for line in lines) == 2, case.label
    # The disk's state is reported beside the figures.
    assert re.search(r"Creating an empty file took \d+ µs just before", proc.stdout), proc.stdout


def test_file_creation_probe_creates_and_keeps_its_files(tmp_path: Path) -> None:
    from bench import harness

    cost = harness.file_creation_cost(tmp_path / "probe", count=50)
    assert cost > 0
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == sorted(
        f"probe-{i}" for i in range(50)
    )


def test_original_drive_runs_only_when_asked() -> None:
    # No network here: the benchmark itself (which installs lightning-app) is not run.
    refused = _quick_bench("--only", "original_drive")
    assert refused.returncode == 2
    assert "needs --original" in refused.stderr
    from bench.__main__ import BENCHMARKS, parse_args

    assert "original_drive" in BENCHMARKS
    assert not parse_args([]).original
    assert parse_args(["--original", "--only", "original_drive"]).original


def test_large_files_peak_meter_sees_a_large_allocation() -> None:
    from bench.large_files import PeakMeter

    with PeakMeter() as meter:
        block = bytearray(32 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    del block
    assert meter.growth >= 16 << 20, meter.method


def _rows(proc: subprocess.CompletedProcess[str], *labels: str) -> None:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for label in labels:
        assert any(line.startswith(label + " ") for line in lines), (label, proc.stdout)


def test_listing_quick_run_prints_every_case_and_target() -> None:
    from bench import listing

    proc = _quick_bench("--only", "listing")
    _rows(proc, *(case.label for case in listing.CASES))
    assert proc.stdout.count("≤ 1.5x: ") == 2
    assert proc.stdout.count("≤ 2x: ") == 1


def test_sync_overhead_quick_run_prints_a_row_per_operation() -> None:
    from bench import sync_overhead

    proc = _quick_bench("--only", "sync_overhead")
    _rows(proc, *(op.label for op in sync_overhead.OPS))
    assert proc.stdout.count("≤ 1.3x: ") == len(sync_overhead.OPS)


def test_fsspec_bulk_quick_run_prints_a_row_per_case() -> None:
    from bench import fsspec_bulk

    proc = _quick_bench("--only", "fsspec_bulk")
    _rows(proc, *(label for _, label in fsspec_bulk.CASES))


def test_cold_start_quick_run_leaves_no_server_behind() -> None:
    proc = _quick_bench("--only", "cold_start")
    _rows(
        proc,
        "server binary started by hand until PING (baseline)",
        "import asyncdrive, fresh process",
    )
    assert proc.stdout.count("≤ 500 ms: ") == 4
    # Every fresh root's embedded server was stopped; its keeper ends within its second.
    keeper = b"\0-I\0-S\0-c\0"
    assert not any(b"/cold-" in line and keeper not in line for line in _command_lines())
    deadline = time.monotonic() + 10
    while any(b"/cold-" in line for line in _command_lines()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(b"/cold-" in line for line in _command_lines())


def test_scaling_quick_run_draws_its_chart(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "scaling", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=240,
        check=False,
    )
    _rows(proc, "1", "2", "4", "8")
    for op in ("put", "get", "list"):
        assert f"{op}: calls per second" in proc.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # CI installs only the test extra: the bench says so
        assert "matplotlib is not installed" in proc.stdout
        return
    chart = tmp_path / "scaling.png"
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert (
        "![put/get/list throughput by processes](scaling.png)"
        in (tmp_path / "BENCHMARKS.md").read_text()
    )


def test_targets_summary_takes_fresh_rows_and_keeps_the_others() -> None:
    from bench.harness import Benchmark, Report, Result, Target

    def bench(name: str, title: str) -> Benchmark:
        return Benchmark(name, title, run=lambda ctx: _no_run())

    small, original = bench("small", "Small files"), bench("original", "Against the original Drive")
    machine = {"CPU": "x", "Cores": "2", "Memory": "1 GiB", "Kernel": "k", "Python": "p",
               "Server": "s", "Drive root": "ext4 (/tmp)"}  # fmt: skip

    def report(*results: Result) -> Report:
        return Report("2026-12-06 00:00 UTC", "python -m bench", False, machine, list(results))

    def result(name: str, title: str, *targets: Target) -> Result:
        return Result(name, title, "intro", [], targets=list(targets))

    first = report(
        result(
            "small",
            "Small files",
            Target("put | sequential", "0.62x", "≥ 0.7x", False, "thread wake-ups"),
        ),
        result(
            "original",
            "Against the original Drive",
            Target("list", "19x", "≥ 5x", True, "never shown when met"),
        ),
    ).markdown([small, original])
    assert "1 of 2 met" in first
    assert "| [Small files](#small-files) | put \\| sequential | 0.62x | ≥ 0.7x | **miss** | " \
        "thread wake-ups |" in first  # fmt: skip
    assert ("| [Against the original Drive](#against-the-original-drive) | list | 19x | ≥ 5x "
            "| **pass** | - |") in first  # fmt: skip
    assert first.index("## Targets") < first.index("## Small files")

    # A run of one benchmark replaces its rows and keeps the other's, as its section.
    second = report(
        result("small", "Small files", Target("put | sequential", "0.71x", "≥ 0.7x", True, "x"))
    ).markdown([small, original], first)
    assert "2 of 2 met" in second
    # A median that only some runs reach says so.
    third = report(
        result(
            "small",
            "Small files",
            Target("put", "0.71x (0.56x..0.80x)", "≥ 0.7x", True, runs_met=(3, 5)),
        )
    ).markdown([small, original], second)
    assert "| ≥ 0.7x | **pass** (3 of 5 runs met it) | - |" in third
    assert "2 of 2 met" in third
    assert "0.62x" not in second and "| 0.71x | ≥ 0.7x | **pass** | - |" in second
    assert "| [Against the original Drive](#against-the-original-drive) | list | 19x |" in second
    assert second.count("<!-- bench-targets -->") == 1


def _no_run() -> Any:
    raise AssertionError("not run")

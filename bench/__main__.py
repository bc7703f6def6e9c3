"""Run the benchmark suite: ``.venv/bin/python -m bench [--quick] [--only NAME]``.

It starts a private server and a temporary root, runs each benchmark, prints its tables,
writes ``bench/results/latest.json`` and rewrites ``BENCHMARKS.md`` at the repository root,
then stops the server and removes the root, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import (
    cold_start,
    fsspec_bulk,
    harness,
    large_files,
    listing,
    original_drive,
    scaling,
    small_files,
    sync_overhead,
    watch_latency,
)
from .harness import Benchmark, Context, Report, Result, Server

#: Every benchmark, in report order. To add one: a module exporting BENCHMARK, and a line here.
BENCHMARKS: dict[str, Benchmark] = {
    module.BENCHMARK.name: module.BENCHMARK
    for module in (
        watch_latency,
        large_files,
        small_files,
        original_drive,
        listing,
        sync_overhead,
        cold_start,
        fsspec_bulk,
        scaling,
    )
}

#: Run only with --original: it installs the original Lightning Drive into its own venv.
ORIGINAL = original_drive.BENCHMARK.name


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure asyncdrive against a private server; print, record and report.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and one run, about half a minute in all: a smoke run (CI). Its figures "
        "go to bench/results/ but never into the repository's BENCHMARKS.md",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=sorted(BENCHMARKS),
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    more = ", ".join(f"{b.name} {b.runs}" for b in BENCHMARKS.values() if b.runs != 3)
    parser.add_argument(
        "--runs", type=int, help=f"runs per benchmark (default: 3, {more}; quick: 1)"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--no-write", action="store_true", help="print only: write no JSON, no BENCHMARKS.md"
    )
    output.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write latest.json and BENCHMARKS.md into DIR instead of bench/results/ and "
        "the repository root",
    )
    parser.add_argument(
        "--root-parent",
        type=Path,
        metavar="DIR",
        help="make the temporary drive root in DIR, to measure that disk (default: the "
        "system's temporary folder)",
    )
    parser.add_argument(
        "--tcp", action="store_true", help="reach the server over loopback TCP, not a unix socket"
    )
    parser.add_argument(
        "--original",
        action="store_true",
        help=f"also run {ORIGINAL}: the original Lightning Drive beside ours. Without this "
        "flag it is never selected: it creates a separate venv (bench/.original-venv, once) "
        "and installs lightning-app 2.3.2 from PyPI into it",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.only and ORIGINAL in args.only and not args.original:
        parser.error(f"--only {ORIGINAL} needs --original (it installs lightning-app)")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its processes.
    raise KeyboardInterrupt


def _log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with_errors = getattr(sys.stdout, "reconfigure", None)
    if with_errors is not None:
        with_errors(errors="backslashreplace")  # µ and → on a terminal that lacks them
    signal.signal(signal.SIGTERM, _terminate)
    selected = [
        BENCHMARKS[name]
        for name in BENCHMARKS
        if (not args.only or name in args.only) and (name != ORIGINAL or args.original)
    ]
    date = Report.now()
    # A short folder: unix socket paths are limited to about 100 bytes.
    server_dir = Path(tempfile.mkdtemp(prefix="adbench-"))
    scratch = Path(tempfile.mkdtemp(prefix="adbench-root-", dir=args.root_parent))
    server = Server(server_dir, tcp=args.tcp)
    try:
        server.start()
        ctx = Context(
            quick=args.quick,
            runs=args.runs or 1,  # set for each benchmark below
            redis_url=server.url,
            scratch=scratch,
            log=_log,
            charts=None if args.no_write else (args.out or harness.RESULTS_DIR),
            markdown_dir=_markdown_dir(args),
        )
        report = Report(
            date=date,
            command=harness.command_line(argv),
            quick=args.quick,
            machine=harness.machine(server, scratch),
            results=[],
        )
        print(f"{report.command}\n{date} on {report.machine_line()}", flush=True)
        print(f"server: {server.url} (private to this run)\n", flush=True)
        for bench in selected:
            print(f"running {bench.name}...", file=sys.stderr, flush=True)
            creating_us = harness.file_creation_cost(ctx.folder("probe"))
            meter = harness.CpuMeter(server)
            meter.start()
            started = time.monotonic()
            runs = args.runs or (1 if args.quick else bench.runs)
            result: Result = bench.run(dataclasses.replace(ctx, runs=runs))
            result.seconds = time.monotonic() - started
            result.background, result.data["background"] = meter.stop()
            result.data["background"]["file_creation_us"] = creating_us
            result.background = (
                f"{result.background} Creating an empty file took {creating_us:.0f} µs "
                "just before (see `file_creation_cost` in `bench/harness.py`)."
            ).strip()
            report.results.append(result)
            print(report.text(result), flush=True)
        report.machine["Load average at end"] = harness.load_average()
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    finally:
        server.stop()
        shutil.rmtree(server_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if not args.no_write:
        _write(report, args)
    return 0


def _markdown_dir(args: argparse.Namespace) -> Path | None:
    """Return the folder of the BENCHMARKS.md this run will write, or None if it writes none."""
    if args.no_write or (args.quick and args.out is None):
        return None
    out: Path | None = args.out
    return out or harness.BENCHMARKS_MD.parent


def _write(report: Report, args: argparse.Namespace) -> None:
    out: Path | None = args.out
    json_path = (out or harness.RESULTS_DIR) / (
        "latest-quick.json" if args.quick and not out else "latest.json"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(report.to_json() + "\n")
    print(f"wrote {json_path}")
    if report.quick and out is None:
        print(f"left {harness.BENCHMARKS_MD.name} alone: --quick figures are a smoke run")
        return
    md_path = out / "BENCHMARKS.md" if out else harness.BENCHMARKS_MD
    previous = md_path.read_text() if md_path.exists() else ""
    md_path.write_text(report.markdown(list(BENCHMARKS.values()), previous))
    print(f"wrote {md_path}")


if __name__ == "__main__":
    sys.exit(main())

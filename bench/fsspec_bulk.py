"""fsspec bulk transfers: a folder of small files put and got through the fsspec filesystem.

Beside the same transfers through the drive's own folder calls (``Drive.put(folder)``,
``Drive.get(folder)``), and a plain ``shutil.copytree`` of the same files on the same disk
(no fsync: a floor, not a durable copy), each measured in the same run on the same files.
fsspec splits a recursive put or get into one call a file and runs up to ~1,280 of them at
once in its own event loop (``run_forever``): what each such call costs decides the rate.
No target of the issue is measured here; it keeps the fsspec path from slowing down unseen.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from asyncdrive import Drive
from asyncdrive._fsspec import DriveFileSystem

from .harness import Benchmark, Context, Result, Table, fmt_ratio, fmt_runs

FULL_FILES = 2000
QUICK_FILES = 100
#: Sizes of the files, at random in this range (bytes): small files, as a dataset's.
SIZES = (1024, 8192)

#: (key, label), in report order; "copytree" is the baseline of every ratio.
CASES = (
    ("copytree", "shutil.copytree (no fsync; baseline)"),
    ("drive_put", "Drive.put(folder)"),
    ("fsspec_put", "fs.put(folder, recursive=True)"),
    ("drive_get", "Drive.get(folder)"),
    ("fsspec_get", "fs.get(folder, recursive=True)"),
    ("fsspec_cat", "fs.cat(every file's path)"),
)


def _make_tree(folder: Path, count: int) -> None:
    rng = random.Random(41)
    for i in range(count):
        (folder / f"f{i:05}.bin").write_bytes(os.urandom(rng.randint(*SIZES)))


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


async def _drive_put_get(ctx: Context, root: Path, tree: Path, out: Path) -> tuple[float, float]:
    async with Drive(ctx.drive_id("folder"), root=root, redis_url=ctx.redis_url) as drive:
        await drive.write_bytes("warm", b"x")  # (connected: not in the figure)
        started = time.perf_counter()
        await drive.put(tree, to="x")
        put = time.perf_counter() - started
        started = time.perf_counter()
        await drive.get("x", to=out)
        return put, time.perf_counter() - started


def _one_run(ctx: Context, count: int) -> dict[str, float]:
    """Measure every case once on a fresh tree; return the seconds of each."""
    scratch = ctx.folder("fsspec")
    try:
        tree = scratch / "tree"
        tree.mkdir()
        _make_tree(tree, count)
        root = scratch / "root"
        root.mkdir()
        seconds = {"copytree": _timed(lambda: shutil.copytree(tree, scratch / "copy"))}
        seconds["drive_put"], seconds["drive_get"] = asyncio.run(
            _drive_put_get(ctx, root, tree, scratch / "drive-out")
        )
        fs = DriveFileSystem(root=str(root), redis_url=ctx.redis_url, skip_instance_cache=True)
        try:
            name = ctx.drive_id("fs").removeprefix("lit://")
            fs.pipe_file(f"lit://{name}/warm", b"x")  # (connected: not in the figure)
            seconds["fsspec_put"] = _timed(
                lambda: fs.put(f"{tree}/", f"lit://{name}/x", recursive=True)
            )
            paths = fs.find(f"lit://{name}/x")
            if len(paths) != count:
                raise AssertionError(f"fs.put stored {len(paths)} files of {count}")
            seconds["fsspec_get"] = _timed(
                lambda: fs.get(f"lit://{name}/x", str(scratch / "fs-out"), recursive=True)
            )
            seconds["fsspec_cat"] = _timed(lambda: fs.cat(paths))
        finally:
            fs.close()
        return seconds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(ctx: Context) -> Result:
    count = QUICK_FILES if ctx.quick else FULL_FILES
    runs: list[dict[str, float]] = []
    for index in range(ctx.runs):
        runs.append(_one_run(ctx, count))
        rate = count / runs[-1]["fsspec_put"]
        ctx.log(f"run {index + 1}/{ctx.runs}: fs.put {rate:.0f} files/s")
    table = Table(["case", "files/s", "files/s over runs", "time / baseline"])
    for key, label in CASES:
        rates = [count / r[key] for r in runs]
        ratios = [r[key] / r["copytree"] for r in runs]
        table.add(
            label,
            f"{statistics.median(rates):.0f}",
            fmt_runs(rates, lambda v: f"{v:.0f}"),
            "-" if key == "copytree" else fmt_ratio(statistics.median(ratios)),
        )
    return Result(
        name=BENCHMARK.name,
        title=BENCHMARK.title,
        intro=(
            f"A folder of {count} files of {SIZES[0] // 1024}-{SIZES[1] // 1024} KiB, put into "
            "a drive and got back, through the fsspec filesystem (blocking use, fsspec's own "
            "event loop) and through the drive's folder calls; the baseline copies the same "
            "folder with `shutil.copytree` on the same disk (no fsync, no index). Each run "
            f"makes a new folder; medians of {ctx.runs} run(s), min..max over them. "
            "`time / baseline`: how many times the copy's time each case takes."
        ),
        tables=[table],
        notes=[
            "A put is durable (each file fsynced, then committed to the index); the "
            "baseline is not: the ratios are the price of that, and of fsspec's way.",
            "fsspec's put and get make one call a file; the drive's folder calls batch them.",
        ],
        data={"files": count, "seconds_per_run": runs},
    )


BENCHMARK = Benchmark(name="fsspec_bulk", title="fsspec bulk transfers", run=run)

"""Listing: one folder of a big drive against the same folder of a small one, and all of it.

Two drives on the same server: a big one of ``FOLDERS`` folders of ``PER_FOLDER`` files, and a
small one holding only the folder that is listed, with the same names. Listing that folder
must cost what the answer costs, not what the drive holds: big over small. A recursive
listing of the whole big drive is compared with the raw read of the key it comes from (the
drive's ``files`` ZSET, `ZRANGE` of every member); a one-folder listing with the raw read of
the folder's children HASH (`HKEYS`). Every case is timed in one asyncio loop, in rounds that
interleave the cases, so a slow spell of the machine hits them alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from asyncdrive import Drive
from asyncdrive._index import Index, Keys

from .harness import (
    Benchmark,
    Context,
    Result,
    Table,
    Target,
    fmt_runs,
    fmt_us,
    per_run_ratios,
    within,
)

#: The issue's targets: reported as pass/miss, never asserted.
TARGET_FOLDER_VS_SMALL = 1.5
TARGET_RECURSIVE_VS_RAW = 2.0

#: (folders, files per folder) of the big drive; the small drive holds one such folder.
FULL_SHAPE = (100, 1000)
QUICK_SHAPE = (20, 100)
#: Concurrent commits while filling (not measured).
FILL_TASKS = 32
#: Timed calls per case and run, as (one-folder cases, whole-drive cases).
FULL_CALLS = (200, 15)
QUICK_CALLS = (20, 3)
ROUNDS = 5
CHECKSUM = "0" * 64


@dataclass(frozen=True)
class Case:
    """One timed listing: what is read, of which drive, and against which baseline."""

    key: str
    label: str
    size: str  # "folder" | "drive": how big the answer is
    baseline: str  # key of the case it is compared with ("" for a baseline)


CASES = (
    Case("raw_hkeys", "HKEYS of the folder's children HASH (baseline)", "folder", ""),
    Case("small", "list(folder), small drive", "folder", "raw_hkeys"),
    Case("big", "list(folder), big drive", "folder", "raw_hkeys"),
    Case("big_info", "list_info(folder), big drive (against list)", "folder", "big"),
    Case("small_rec", "list(folder, recursive=True), small drive", "folder", "raw_hkeys"),
    Case("big_rec", "list(folder, recursive=True), big drive", "folder", "raw_hkeys"),
    Case("raw_zrange", "ZRANGE of the drive's files ZSET, all (baseline)", "drive", ""),
    Case("all_rec", "list('.', recursive=True), big drive", "drive", "raw_zrange"),
)
CASE = {c.key: c for c in CASES}


def folder_name(index: int) -> str:
    return f"f{index:03d}"


def file_path(folder: str, index: int) -> str:
    return f"{folder}/file-{index:05d}.bin"


async def fill(client: aioredis.Redis, drive_name: str, paths: list[str]) -> None:
    """Index ``paths`` as files of ``drive_name``, as puts do, without their bytes.

    Each file goes through `Index.commit_put`, the Lua commit that ends every put: the same
    keys (entry, folder children, files ZSET, versions, change log) a real put leaves.
    """
    index = Index(client, drive_name)
    todo = iter(paths)
    now = time.time()

    async def committer() -> None:
        for path in todo:
            outcome = await index.commit_put("bench", path, False, 0, 1, now, CHECKSUM, "", "")
            if outcome.status != "ok":
                raise RuntimeError(f"could not index {path}: {outcome}")

    await asyncio.gather(*(committer() for _ in range(FILL_TASKS)))


async def drop(client: aioredis.Redis, drive_name: str) -> None:
    """Delete every key of a drive, to give the server's memory back to later benchmarks."""
    pattern = Keys(drive_name).prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    batch: list[str] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


async def _time(call: Callable[[], Awaitable[Any]], n: int, expect: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        got = await call()
        samples.append((time.perf_counter_ns() - started) / 1000)
        if len(got) != expect:
            raise RuntimeError(f"listed {len(got)} entries, expected {expect}")
    return samples


async def _measure(ctx: Context) -> tuple[dict[str, list[float]], dict[str, Any]]:
    folders, per_folder = QUICK_SHAPE if ctx.quick else FULL_SHAPE
    calls = QUICK_CALLS if ctx.quick else FULL_CALLS
    listed = folder_name(folders // 2)
    big_id, small_id = ctx.drive_id("list-big"), ctx.drive_id("list-small")
    big_name, small_name = big_id.removeprefix("lit://"), small_id.removeprefix("lit://")
    names = [file_path(listed, i) for i in range(per_folder)]
    client = aioredis.Redis.from_url(ctx.redis_url, decode_responses=True)
    root = ctx.folder("root")
    try:
        started = time.monotonic()
        big_paths = [
            file_path(folder_name(f), i) for f in range(folders) for i in range(per_folder)
        ]
        await fill(client, big_name, big_paths)
        await fill(client, small_name, names)
        fill_s = time.monotonic() - started
        ctx.log(f"indexed {len(big_paths) + len(names)} files in {fill_s:.1f} s")
        big = Drive(big_id, root=root, redis_url=ctx.redis_url)
        small = Drive(small_id, root=root, redis_url=ctx.redis_url)
        async with big, small:
            total = len(big_paths)
            children = Keys(big_name).children(listed)
            files = Keys(big_name).files
            cases: dict[str, tuple[Callable[[], Awaitable[Any]], int]] = {
                "raw_hkeys": (lambda: client.hkeys(children), per_folder),
                "small": (lambda: small.list(listed), per_folder),
                "big": (lambda: big.list(listed), per_folder),
                "big_info": (lambda: big.list_info(listed), per_folder),
                "small_rec": (lambda: small.list(listed, recursive=True), per_folder),
                "big_rec": (lambda: big.list(listed, recursive=True), per_folder),
                "raw_zrange": (lambda: client.zrange(files, 0, -1), total),
                "all_rec": (lambda: big.list(".", recursive=True), total),
            }
            if (
                await big.list(listed) != await small.list(listed)
                or len(await big.list(".")) != folders
            ):
                raise RuntimeError("the drives do not hold what was indexed")
            for call, expect in cases.values():  # warm-up: connections, caches
                await _time(call, 2, expect)
            medians: dict[str, list[float]] = {c.key: [] for c in CASES}
            for index in range(ctx.runs):
                samples: dict[str, list[float]] = {c.key: [] for c in CASES}
                order = list(CASES) if index % 2 == 0 else list(reversed(CASES))
                for _round in range(ROUNDS):
                    for case in order:
                        n = calls[0] if case.size == "folder" else calls[1]
                        call, expect = cases[case.key]
                        samples[case.key] += await _time(call, max(1, n // ROUNDS), expect)
                for key, values in samples.items():
                    medians[key].append(statistics.median(values))
                ctx.log(
                    f"run {index + 1}/{ctx.runs}: big/small "
                    f"{medians['big'][-1] / medians['small'][-1]:.2f}x, recursive/ZRANGE "
                    f"{medians['all_rec'][-1] / medians['raw_zrange'][-1]:.2f}x"
                )
    finally:
        await drop(client, big_name)
        await drop(client, small_name)
        await client.aclose()
    shape = {
        "folders": folders,
        "per_folder": per_folder,
        "files": folders * per_folder,
        "listed_folder": listed,
        "calls_per_run": {"folder": calls[0], "drive": calls[1]},
        "fill_s": fill_s,
    }
    return medians, shape


def run(ctx: Context) -> Result:
    medians, shape = asyncio.run(_measure(ctx))
    return Result(
        name=BENCHMARK.name,
        title=BENCHMARK.title,
        intro=_intro(shape, ctx.runs),
        tables=[_table(medians, shape), _targets(medians, shape)],
        targets=_summary_targets(medians, shape),
        notes=_notes(medians, shape),
        data={
            **shape,
            "runs": ctx.runs,
            "targets": {
                "big_vs_small_folder": TARGET_FOLDER_VS_SMALL,
                "recursive_vs_raw": TARGET_RECURSIVE_VS_RAW,
            },
            "median_us_per_run": medians,
            "labels": {c.key: c.label for c in CASES},
        },
    )


def _intro(shape: dict[str, Any], nruns: int) -> str:
    folders, per, files = shape["folders"], shape["per_folder"], shape["files"]
    return (
        f"Two drives on the same server: a big one of {files:,} files in {folders} folders "
        f"of {per:,}, and a small one of {per:,} files, exactly the folder "
        f"`{shape['listed_folder']}` that is listed in both (same names, same answer). An "
        "async `Drive` lists the folder (its names, one `HKEYS` of the folder's children "
        "HASH), the folder recursively (a lexicographic range of the drive's `files` ZSET), "
        f"and the whole big drive recursively (all {files:,} paths). The baselines read the "
        "keys asyncdrive reads, with a plain `redis.asyncio` client decoding to `str` as "
        "asyncdrive's does: `HKEYS` of the same children HASH, and `ZRANGE 0 -1` of the same "
        f"`files` ZSET. Each run times {shape['calls_per_run']['folder']} calls of every "
        f"one-folder case and {shape['calls_per_run']['drive']} of every whole-drive case, in "
        f"{ROUNDS} rounds that interleave the cases (in reverse order every other run), and "
        f"takes each case's median; figures are the median over {nruns} run(s) with min and "
        "max, and every ratio is taken within a run.\n\n"
        "The files are indexed (not measured) through asyncdrive's own commit script "
        "(`Index.commit_put`, the Lua call that ends every put), without their bytes: a "
        "listing reads only the index, and a whole put (two fsyncs, a thread hop, two "
        "round trips) would make the fill of 100,000 files take minutes. "
        f"The fill took {shape['fill_s']:.0f} s."
    )


def _ratios(medians: dict[str, list[float]], key: str, base: str) -> list[float]:
    return per_run_ratios(medians[key], medians[base])


def _table(medians: dict[str, list[float]], shape: dict[str, Any]) -> Table:
    table = Table(
        ["case", "entries", "µs p50", "min µs", "max µs", "/ baseline"],
        title="Time per listing (median of each run's median; min and max over the runs)",
    )
    for case in CASES:
        values = medians[case.key]
        entries = shape["per_folder"] if case.size == "folder" else shape["files"]
        table.add(
            case.label,
            f"{entries:,}",
            fmt_us(statistics.median(values)),
            fmt_us(min(values)),
            fmt_us(max(values)),
            fmt_runs(_ratios(medians, case.key, case.baseline), _x) if case.baseline else "-",
        )
    return table


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _targets(medians: dict[str, list[float]], shape: dict[str, Any]) -> Table:
    table = Table(
        ["comparison", "ratio p50 (min..max)", "target"],
        title="Against the targets (ratios within each run)",
    )
    for label, ratios, target in _target_rows(medians, shape):
        table.add(label, fmt_runs(ratios, _x), within(statistics.median(ratios), target))
    return table


def _summary_targets(medians: dict[str, list[float]], shape: dict[str, Any]) -> list[Target]:
    return [
        Target(label, fmt_runs(ratios, _x), f"≤ {target:g}x", statistics.median(ratios) <= target)
        for label, ratios, target in _target_rows(medians, shape)
    ]


def _target_rows(
    medians: dict[str, list[float]], shape: dict[str, Any]
) -> tuple[tuple[str, list[float], float], ...]:
    """Each target: what it compares, the ratio of each run, and its upper limit."""
    return (
        (
            f"list(folder of {shape['per_folder']:,}): big drive / small drive",
            _ratios(medians, "big", "small"),
            TARGET_FOLDER_VS_SMALL,
        ),
        (
            f"list(folder of {shape['per_folder']:,}, recursive): big / small",
            _ratios(medians, "big_rec", "small_rec"),
            TARGET_FOLDER_VS_SMALL,
        ),
        (
            f"list('.', recursive) of {shape['files']:,} / raw ZRANGE",
            _ratios(medians, "all_rec", "raw_zrange"),
            TARGET_RECURSIVE_VS_RAW,
        ),
    )


def _notes(medians: dict[str, list[float]], shape: dict[str, Any]) -> list[str]:
    def med(key: str, base: str) -> str:
        return _x(statistics.median(_ratios(medians, key, base)))

    per_entry = statistics.median(
        (a - b) / shape["files"]
        for a, b in zip(medians["all_rec"], medians["raw_zrange"], strict=True)
    )
    info_per_entry = statistics.median(
        (a - b) / shape["per_folder"]
        for a, b in zip(medians["big_info"], medians["big"], strict=True)
    )
    return [
        f"A folder of the big drive lists at {med('big', 'small')} the cost of the same "
        f"folder alone, recursively at {med('big_rec', 'small_rec')}: each reads one key "
        "holding the answer (the children HASH, or a range of the `files` ZSET found in "
        "O(log n)), so the drive's size does not enter.",
        f"A one-folder listing costs {med('small', 'raw_hkeys')} the raw `HKEYS`: the same "
        "call in a `MULTI` with an `EXISTS` (is the path a file?), the joining of "
        "each name to its folder and the sort; the recursive listing of the whole drive costs "
        f"{med('all_rec', 'raw_zrange')} the raw `ZRANGE` "
        f"({fmt_us(abs(per_entry) * 1000)} ns {'more' if per_entry > 0 else 'less'} per "
        "entry): one `ZRANGEBYLEX` in a `MULTI` with an `EXISTS`, no per-entry work. "
        "Replies are parsed by hiredis (redis-py's C parser), as are the baselines'.",
        f"`list_info` of the same folder costs {med('big_info', 'big')} its `list` "
        f"({fmt_us(info_per_entry)} µs more per entry): one round trip more, an "
        "`HGETALL` of each entry's owners, pipelined, each answer made a `FileInfo` (and, "
        "where some entries have no owner, one more: an `EXISTS` of each one's children, "
        "is it a folder?). No target: `info()` of each entry would take a round trip each.",
    ]


BENCHMARK = Benchmark(name="listing", title="Listing", run=run)

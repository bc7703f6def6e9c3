"""SyncDrive overhead: a small blocking operation against the same operation awaited.

In one spawned worker process per run, each operation is timed back to back on an async
`Drive` (inside ``asyncio.run``) and on a `SyncDrive` (from the main thread, its calls
carried to the background event-loop thread), on the same drive, files and server. The
ratio of the two medians, taken within the run, is the price of the blocking face.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asyncdrive import Drive, SyncDrive, _portal

from .harness import Benchmark, Context, Result, Table, Workers, fmt_runs, fmt_us, within

#: The issue's target: reported as pass/miss, never asserted.
TARGET_RATIO = 1.3

FILE_SIZE = 1024
LISTED_FILES = 10
#: Timed calls per operation, face and run: (read-only operations, write_bytes).
FULL_CALLS = (400, 100)
QUICK_CALLS = (40, 10)
WARMUP = 10


@dataclass(frozen=True)
class Op:
    """One small operation, called the same way on both faces."""

    key: str
    label: str
    writes: bool = False


OPS = (
    Op("exists", f"exists() of a {FILE_SIZE} B file"),
    Op("info", f"info() of a {FILE_SIZE} B file"),
    Op("read_bytes", f"read_bytes() of {FILE_SIZE} B"),
    Op("list", f"list() of a folder of {LISTED_FILES}"),
    Op("write_bytes", f"write_bytes() of {FILE_SIZE} B, replacing", writes=True),
)
HOP = "hop"
FACES = ("async", "sync")


@dataclass(frozen=True)
class Plan:
    """What one worker measures (it pickles)."""

    redis_url: str
    root: str
    drive_id: str
    calls: tuple[int, int]
    sync_first: bool


def _calls(plan: Plan, op: Op) -> int:
    return plan.calls[1] if op.writes else plan.calls[0]


def _args(op: Op) -> tuple[Any, ...]:
    if op.key in ("exists", "info", "read_bytes"):
        return ("data/small.bin",)
    if op.key == "list":
        return ("listed",)
    return ("data/written.bin", b"w" * FILE_SIZE)


async def _prepare(plan: Plan) -> None:
    async with Drive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        await drive.write_bytes("data/small.bin", b"s" * FILE_SIZE)
        for i in range(LISTED_FILES):
            await drive.write_bytes(f"listed/{i}.bin", b"l")


async def _time_async(plan: Plan, op: Op) -> float:
    async with Drive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        method: Callable[..., Awaitable[Any]] = getattr(drive, op.key)
        args = _args(op)
        samples = []
        for i in range(WARMUP + _calls(plan, op)):
            started = time.perf_counter_ns()
            await method(*args)
            if i >= WARMUP:
                samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def _time_sync(plan: Plan, op: Op) -> float:
    with SyncDrive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        method: Callable[..., Any] = getattr(drive, op.key)
        args = _args(op)
        samples = []
        for i in range(WARMUP + _calls(plan, op)):
            started = time.perf_counter_ns()
            method(*args)
            if i >= WARMUP:
                samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


async def _noop() -> None:
    return None


async def _time_await_noop(n: int) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await _noop()
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def _time_hop(n: int) -> float:
    """Time a no-op coroutine carried to the loop thread and back, as every call is."""
    portal = _portal.acquire(-1, _noop)
    try:
        samples = []
        for i in range(WARMUP + n):
            started = time.perf_counter_ns()
            _portal.run(portal, _noop)
            if i >= WARMUP:
                samples.append(time.perf_counter_ns() - started)
    finally:
        _portal.release(-1)
    return statistics.median(samples) / 1000


def worker(plan: Plan) -> dict[str, dict[str, float]]:
    """Return the median µs of each operation on each face, for one run."""
    asyncio.run(_prepare(plan))
    got: dict[str, dict[str, float]] = {}
    for op in OPS:
        figures: dict[str, float] = {}
        for face in reversed(FACES) if plan.sync_first else FACES:
            if face == "async":
                figures[face] = asyncio.run(_time_async(plan, op))
            else:
                figures[face] = _time_sync(plan, op)
        got[op.key] = figures
    got[HOP] = {"async": asyncio.run(_time_await_noop(plan.calls[0])), "sync": 0.0}
    got[HOP]["sync"] = _time_hop(plan.calls[0])
    return got


def run(ctx: Context) -> Result:
    calls = QUICK_CALLS if ctx.quick else FULL_CALLS
    root = ctx.folder("root")
    drive_id = ctx.drive_id("sync")
    # per key and face, one median per run
    medians: dict[str, dict[str, list[float]]] = {
        key: {face: [] for face in FACES} for key in [*(op.key for op in OPS), HOP]
    }
    for index in range(ctx.runs):
        plan = Plan(ctx.redis_url, str(root), drive_id, calls, sync_first=index % 2 == 1)
        with Workers() as workers:
            workers.spawn("sync-overhead", worker, plan)
            got: dict[str, dict[str, float]] = workers.wait(timeout=300)["sync-overhead"]
        for key, figures in got.items():
            for face in FACES:
                medians[key][face].append(figures[face])
        worst = max(got[op.key]["sync"] / got[op.key]["async"] for op in OPS)
        ctx.log(f"run {index + 1}/{ctx.runs}: worst sync/async {worst:.2f}x")
    return Result(
        name=BENCHMARK.name,
        title=BENCHMARK.title,
        intro=_intro(calls, ctx.runs),
        tables=[_table(medians)],
        notes=_notes(medians),
        data={
            "file_size": FILE_SIZE,
            "calls_per_run": {"read_only": calls[0], "write_bytes": calls[1]},
            "runs": ctx.runs,
            "target_ratio": TARGET_RATIO,
            "median_us_per_run": medians,
            "labels": {op.key: op.label for op in OPS},
        },
    )


def _ratios(medians: dict[str, dict[str, list[float]]], key: str) -> list[float]:
    return [s / a for s, a in zip(medians[key]["sync"], medians[key]["async"], strict=True)]


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _us(values: list[float]) -> str:
    return fmt_runs(values, fmt_us)


def _table(medians: dict[str, dict[str, list[float]]]) -> Table:
    table = Table(
        ["operation", "Drive µs", "SyncDrive µs", "extra µs", "SyncDrive / Drive", "target"],
        title="Median µs per call, median over the runs (min..max); the ratio is taken "
        "within each run",
    )
    for op in OPS:
        ratios = _ratios(medians, op.key)
        extra = [
            s - a for s, a in zip(medians[op.key]["sync"], medians[op.key]["async"], strict=True)
        ]
        table.add(
            op.label,
            _us(medians[op.key]["async"]),
            _us(medians[op.key]["sync"]),
            _us(extra),
            fmt_runs(ratios, _x),
            within(statistics.median(ratios), TARGET_RATIO),
        )
    table.add(
        "no-op coroutine: awaited / through the loop thread",
        _us(medians[HOP]["async"]),
        _us(medians[HOP]["sync"]),
        "-",
        "-",
        "-",
    )
    return table


def _intro(calls: tuple[int, int], nruns: int) -> str:
    return (
        f"Each run spawns one worker process, which puts a {FILE_SIZE} B file and a folder "
        f"of {LISTED_FILES} files into a drive, then times each operation {calls[0]} times "
        f"({calls[1]} for `write_bytes`, which fsyncs), back to back after {WARMUP} "
        "unmeasured calls, first on an async `Drive` awaited inside `asyncio.run`, then on a "
        "`SyncDrive` called from the main thread (the other way round every other run). "
        "Both talk to the same drive, files and server; each face opens its drive before "
        "its timing starts. The figure per run is the median call; the ratio SyncDrive / "
        f"Drive is taken within the run, then its median over {nruns} run(s) reported with "
        "min and max. The last row prices the bridge alone: a coroutine that does nothing, "
        "awaited, and carried to the `SyncDrive` loop thread and back."
    )


def _notes(medians: dict[str, dict[str, list[float]]]) -> list[str]:
    hop = statistics.median(medians[HOP]["sync"])
    missed = [op for op in OPS if statistics.median(_ratios(medians, op.key)) > TARGET_RATIO]
    notes = [
        "Every blocking call is one hop to the loop thread and one back "
        f"(`asyncio.run_coroutine_threadsafe`): {fmt_us(hop)} µs for a no-op called back to "
        "back, an added cost per call, so the ratio is largest for the fastest operations. "
        "Before this benchmark the bridge was anyio's `BlockingPortal.start_task_soon`, "
        "which first waits for the loop to spawn the task (a second round trip between "
        "the threads): about twice the hop.",
    ]
    if missed:
        names = ", ".join(f"`{op.key}`" for op in missed)
        extra = statistics.median(
            s - a
            for op in missed
            for s, a in zip(medians[op.key]["sync"], medians[op.key]["async"], strict=True)
        )
        notes.append(
            f"Missed for {names}: these take about one Redis round trip awaited, and the "
            f"blocking call adds {fmt_us(extra)} µs, more than the back-to-back no-op hop. "
            "Profiled by stamping inside the coroutine (an `info()` through the portal): "
            "about 57 µs from the call to the coroutine starting on the loop thread, the "
            "operation itself about 50 µs slower there than awaited on the main thread, and "
            "40 µs from its end back to the caller. Every hand-off wakes a thread that was "
            "asleep (the loop thread out of `epoll_wait` through its self-pipe, the caller "
            "out of a futex wait), and on this 2-core virtual machine a wake-up costs more "
            "the longer the thread slept: the no-op hop grows by a third when the loop "
            "thread idles a millisecond between calls. The bridge's own Python work is now "
            "one `run_coroutine_threadsafe`; what is left is scheduling, which the design "
            "(one loop thread per process, not a loop per calling thread, and no spinning) "
            "accepts. `write_bytes` (three fsyncs) absorbs it; `read_bytes` is at the edge."
        )
    return notes


BENCHMARK = Benchmark(name="sync_overhead", title="SyncDrive overhead", run=run)

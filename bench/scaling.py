"""Scaling: put, get and list throughput with 1, 2, 4 and 8 processes, charted.

For each process count, that many worker processes are spawned, each with an async `Drive`
and a plain redis-py client. The bench then runs phases: for each operation, first through
asyncdrive, then its raw floor (the least the same work costs with plain files and one Redis
call). A phase starts at one instant in every worker (a `clock_ns` stamp sent ahead) and lasts
a fixed time; each worker calls the operation back to back and counts. Throughput is the
calls of all workers over the time from the earliest start to the latest end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from asyncdrive import Drive

from .harness import MP, Benchmark, Context, Result, Table, Workers, clock_ns, fmt_runs

PROCESSES = (1, 2, 4, 8)
OPS = ("put", "get", "list")
MODES = ("drive", "raw")
FILE_SIZE = 4096
SHARED_FILES = 100
FULL_SECONDS = 1.0
QUICK_SECONDS = 0.2
#: How far ahead of a phase its start is announced, so that every worker is waiting.
LEAD_S = 0.05
PEER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Plan:
    """What one worker needs (it pickles)."""

    index: int
    redis_url: str
    root: str
    drive_id: str
    raw_key: str
    raw_dir: str
    workdir: str


# -- the worker process ----------------------------------------------------------------------


class _Worker:
    def __init__(self, plan: Plan, drive: Drive, client: redis.Redis) -> None:
        self.plan = plan
        self.drive = drive
        self.client = client
        self.work = Path(plan.workdir)
        self.local = self.work / "local.bin"
        self.local.write_bytes(os.urandom(FILE_SIZE))
        self.payload = self.local.read_bytes()
        self.out = self.work / "out"
        self.out.mkdir()
        self.raw = Path(plan.raw_dir)
        self.n = 0
        # Its own in every measurement (the work folder's name is): the drive and the floor
        # are the same from one measurement to the next, and a put to a path a worker of an
        # earlier one used would replace that file, not create one.
        self.tag = self.work.name

    async def call(self, mode: str, op: str) -> None:
        n = self.n = self.n + 1
        if mode == "drive":
            if op == "put":
                await self.drive.put(self.local, to=f"put/{self.tag}/{n}.bin")
            elif op == "get":
                await self.drive.get(f"shared/{n % SHARED_FILES}.bin", to=self.out / f"d{n}")
            else:
                await self.drive.list("shared")
            return
        if op == "put":
            tmp = self.raw / f".tmp-{self.tag}-{n}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, self.payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.raw / f"{self.tag}-{n}.bin")
            # A key of its own: the shared folder that get and list read stays 100 names.
            self.client.hset(self.plan.raw_key + ":put", f"{self.tag}-{n}.bin", FILE_SIZE)
        elif op == "get":
            name = f"{n % SHARED_FILES}.bin"
            if self.client.hget(self.plan.raw_key, name) is None:
                raise FileNotFoundError(name)
            shutil.copyfile(self.raw / name, self.out / f"r{n}")
        else:
            self.client.hkeys(self.plan.raw_key)


def _recv(link: Connection) -> Any:
    if not link.poll(PEER_TIMEOUT):
        raise TimeoutError(f"no word from the bench within {PEER_TIMEOUT:.0f} s")
    return link.recv()


async def _serve(plan: Plan, link: Connection) -> None:
    client = redis.Redis.from_url(plan.redis_url, decode_responses=True)
    try:
        async with Drive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
            worker = _Worker(plan, drive, client)
            for mode in MODES:  # warm-up: connections, folders, caches
                for op in OPS:
                    await worker.call(mode, op)
            link.send("ready")
            while (phase := _recv(link)) is not None:
                mode, op, start_ns, seconds = phase
                time.sleep(max(0.0, (start_ns - clock_ns()) / 1e9))
                started = clock_ns()
                deadline = started + int(seconds * 1e9)
                count = 0
                while clock_ns() < deadline:
                    await worker.call(mode, op)
                    count += 1
                link.send((count, started, clock_ns()))
    finally:
        client.close()


def worker(plan: Plan, link: Connection) -> None:
    """Run the phases the bench announces until it sends None."""
    asyncio.run(_serve(plan, link))


# -- measuring -------------------------------------------------------------------------------


def _prepare(ctx: Context, root: Path, drive_id: str, raw_key: str, raw_dir: Path) -> None:
    """Put the shared folder that gets and lists read, in the drive and for the floor."""

    async def put_shared() -> None:
        async with Drive(drive_id, root=root, redis_url=ctx.redis_url) as drive:
            for i in range(SHARED_FILES):
                await drive.write_bytes(f"shared/{i}.bin", os.urandom(FILE_SIZE))

    asyncio.run(put_shared())
    client = redis.Redis.from_url(ctx.redis_url)
    try:
        for i in range(SHARED_FILES):
            (raw_dir / f"{i}.bin").write_bytes(os.urandom(FILE_SIZE))
            client.hset(raw_key, f"{i}.bin", FILE_SIZE)
    finally:
        client.close()


def _measure(ctx: Context, plans: list[Plan], seconds: float) -> dict[str, dict[str, float]]:
    """Run every phase with one worker per plan; return ops/s by mode and operation."""
    rates: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    with Workers() as workers:
        links = []
        for plan in plans:
            here, there = MP.Pipe()
            workers.spawn(f"scaling-{plan.index}", worker, plan, there)
            there.close()
            links.append(here)
        for link in links:
            if _recv(link) != "ready":
                raise RuntimeError("a worker did not get ready")
        for op in OPS:
            for mode in MODES:
                start = clock_ns() + int(LEAD_S * 1e9)
                for link in links:
                    link.send((mode, op, start, seconds))
                spans = [_recv(link) for link in links]
                calls = sum(s[0] for s in spans)
                wall = (max(s[2] for s in spans) - min(s[1] for s in spans)) / 1e9
                rates[mode][op] = calls / wall
        for link in links:
            link.send(None)
        workers.wait(timeout=PEER_TIMEOUT)
    return rates


def run(ctx: Context) -> Result:
    seconds = QUICK_SECONDS if ctx.quick else FULL_SECONDS
    root = ctx.folder("root")
    drive_id = ctx.drive_id("scaling")
    raw_key = drive_id.replace("lit://", "bench:raw:")
    raw_dir = ctx.folder("raw")
    _prepare(ctx, root, drive_id, raw_key, raw_dir)
    # rates[mode][op][processes]: one figure per run
    rates: dict[str, dict[str, dict[int, list[float]]]] = {
        mode: {op: {p: [] for p in PROCESSES} for op in OPS} for mode in MODES
    }
    for index in range(ctx.runs):
        order = PROCESSES if index % 2 == 0 else tuple(reversed(PROCESSES))
        for count in order:
            plans = [
                Plan(k, ctx.redis_url, str(root), drive_id, raw_key, str(raw_dir),
                     str(ctx.folder(f"work-{count}-{k}-{uuid.uuid4().hex[:4]}")))
                for k in range(count)
            ]  # fmt: skip
            got = _measure(ctx, plans, seconds)
            for mode in MODES:
                for op in OPS:
                    rates[mode][op][count].append(got[mode][op])
            figures = ", ".join(f"{op} {got['drive'][op]:.0f}/s" for op in OPS)
            ctx.log(f"run {index + 1}/{ctx.runs}, {count} processes: {figures}")
    charts: list[tuple[str, str]] = []
    notes = _notes(rates)
    path = ctx.chart_path("scaling")
    if path is not None:
        drawn = _chart(rates, path, ctx.quick)
        if drawn:
            charts.append(("put/get/list throughput by processes", ctx.chart_link(path)))
        else:
            notes.append(
                "No chart: matplotlib is not installed. Install the bench extra "
                "(`pip install -e '.[bench]'`) to draw it."
            )
    return Result(
        name=BENCHMARK.name,
        title=BENCHMARK.title,
        intro=_intro(seconds, ctx.runs),
        tables=[_table(rates, op) for op in OPS],
        notes=notes,
        charts=charts,
        data={
            "processes": list(PROCESSES),
            "seconds_per_phase": seconds,
            "file_size": FILE_SIZE,
            "runs": ctx.runs,
            "ops_per_s_per_run": {
                mode: {op: {str(p): v for p, v in by.items()} for op, by in ops.items()}
                for mode, ops in rates.items()
            },
        },
    )


# -- reporting -------------------------------------------------------------------------------


def _rate(value: float) -> str:
    return f"{value:.0f}"


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def _table(rates: dict[str, dict[str, dict[int, list[float]]]], op: str) -> Table:
    drive, raw = rates["drive"][op], rates["raw"][op]
    table = Table(
        ["processes", "ops/s p50 (min..max)", "/ 1 process", "floor ops/s", "floor / 1 process",
         "asyncdrive / floor"],
        title=f"{op}: calls per second, all processes together (ratios within each run)",
    )  # fmt: skip
    for p in PROCESSES:
        table.add(
            str(p),
            fmt_runs(drive[p], _rate),
            fmt_runs(_ratios(drive[p], drive[1]), _x),
            fmt_runs(raw[p], _rate),
            fmt_runs(_ratios(raw[p], raw[1]), _x),
            fmt_runs(_ratios(drive[p], raw[p]), _x),
        )
    return table


def _chart(rates: dict[str, dict[str, dict[int, list[float]]]], path: Path, quick: bool) -> bool:
    """Draw throughput and speed-up by process count into ``path``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, op in enumerate(OPS):
        color = f"C{i}"
        for mode, style in (("drive", "-"), ("raw", "--")):
            by = rates[mode][op]
            med = [statistics.median(by[p]) for p in PROCESSES]
            low = [med[j] - min(by[p]) for j, p in enumerate(PROCESSES)]
            high = [max(by[p]) - med[j] for j, p in enumerate(PROCESSES)]
            label = f"{op}, {'asyncdrive' if mode == 'drive' else 'floor (files + redis-py)'}"
            left.errorbar(PROCESSES, med, yerr=[low, high], fmt=style + "o", color=color,
                          label=label, capsize=3, markersize=4)  # fmt: skip
            speedup = [statistics.median(_ratios(by[p], by[1])) for p in PROCESSES]
            right.plot(PROCESSES, speedup, style + "o", color=color, label=label, markersize=4)
    right.plot(PROCESSES, PROCESSES, ":", color="grey", label="linear")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(PROCESSES, [str(p) for p in PROCESSES])
        ax.set_xlabel("processes")
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("calls per second, all processes (median, min..max)")
    right.set_ylabel("throughput / 1 process (median of per-run ratios)")
    left.legend(fontsize=7)
    suffix = " (--quick: smoke-run sizes)" if quick else ""
    fig.suptitle(f"asyncdrive scaling: put, get, list of {FILE_SIZE} B files{suffix}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _intro(seconds: float, nruns: int) -> str:
    return (
        f"For 1, 2, 4 and 8 processes, that many worker processes are spawned; each holds "
        "an async `Drive` and a redis-py client, on the same drive, files and server. Then, "
        f"operation by operation, every worker calls it back to back for {seconds:g} s, all "
        "starting at one announced instant: `put()` of a local 4 KiB file to a new path of "
        "its own, `get()` of one of 100 shared 4 KiB files to a new local path, `list()` of "
        "that 100-file folder. Each is followed by its floor, the least the same work costs "
        "without asyncdrive, in blocking calls: put writes a temporary file, fsyncs it, "
        "renames it into place and `HSET`s one field; get `HGET`s and copies the file "
        "(`shutil.copyfile`); list is one `HKEYS`. Throughput is all workers' calls over the "
        "time from the earliest start to the latest end. The baseline is the 1-process figure "
        "of the same run (`/ 1 process`), and the floor at the same process count. "
        f"{nruns} run(s), process counts in reverse order every other run; figures are the "
        "median over the runs with min and max, and ratios are taken within a run."
    )


def _notes(rates: dict[str, dict[str, dict[int, list[float]]]]) -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    top = PROCESSES[-1]

    def speedup(mode: str, op: str) -> str:
        by = rates[mode][op]
        return _x(statistics.median(_ratios(by[top], by[1])))

    return [
        f"With {top} processes, asyncdrive reaches {speedup('drive', 'put')} its 1-process "
        f"put rate, {speedup('drive', 'get')} for get and {speedup('drive', 'list')} for "
        f"list; the floor reaches {speedup('raw', 'put')}, {speedup('raw', 'get')} and "
        f"{speedup('raw', 'list')}. This machine has {cores} cores, shared with the server "
        "and with whatever else runs: beyond that many processes each one only waits its "
        "turn, so the curves flatten there whatever the code does. Puts also share one "
        "filesystem journal, whose fsyncs partly serialise.",
    ]


BENCHMARK = Benchmark(name="scaling", title="Scaling", run=run)

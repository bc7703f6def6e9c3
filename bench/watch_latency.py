"""Watch latency: from put()/write_bytes() in one process to the event in a watcher in another.

For each case a writer process and a watcher process are spawned. The writer stamps
`clock_ns` just before each call and just after it returns; the watcher stamps each event as
it is handed out, then acknowledges it over a pipe. The writer waits for that acknowledgement
and a short gap before the next call, so every event finds the watcher idle and blocked in
Redis: the figures are latency, not queueing. Each drive event also carries the server's
commit time, which splits the latency into the writer's part and the delivery.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio.to_thread
import redis
import redis.asyncio as aioredis

from asyncdrive import Drive, DriveEvent, SyncDrive

from .harness import (
    MP,
    Benchmark,
    Context,
    Result,
    Summary,
    Table,
    Target,
    Workers,
    clock_ns,
    fmt_ratio,
    fmt_us,
)

#: The issue's targets, on loopback: reported as pass/miss, never asserted.
TARGET_P50_US = 1_000
TARGET_P99_US = 5_000

PUT_SIZE = 4096
#: Pause after each acknowledged event before the next write, so the watcher is idle again.
GAP_S = 0.002
QUICK_GAP_S = 0.001
#: Seconds a writer or watcher waits for the other before giving up.
PEER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Case:
    """One measured pair: how the writer writes, and how the watcher receives."""

    key: str
    label: str
    write: str  # "xadd" | "put" | "write_bytes"
    size: int
    consume: str  # "xread" | "xread_async" | "watch" | "sync_watch"

    @property
    def is_drive(self) -> bool:
        return self.write != "xadd"


BASELINE = Case("baseline", "XADD → XREAD BLOCK, redis-py (baseline)", "xadd", 0, "xread")
CASES = (
    BASELINE,
    Case("redis_asyncio", "XADD → XREAD BLOCK, redis.asyncio", "xadd", 0, "xread_async"),
    Case("put_watch", "put(4 KiB) → Drive.watch", "put", PUT_SIZE, "watch"),
    Case("write0_watch", "write_bytes(0 B) → Drive.watch", "write_bytes", 0, "watch"),
    Case("write1_watch", "write_bytes(1 B) → Drive.watch", "write_bytes", 1, "watch"),
    Case("put_sync_watch", "put(4 KiB) → SyncDrive.watch", "put", PUT_SIZE, "sync_watch"),
    Case("write1_sync_watch", "write_bytes(1 B) → SyncDrive.watch", "write_bytes", 1, "sync_watch"),
)


@dataclass(frozen=True)
class Plan:
    """Everything a writer and its watcher need for one run of one case (it pickles)."""

    case: Case
    redis_url: str
    root: str
    workdir: str
    drive_id: str
    stream: str
    warmup: int
    events: int
    gap: float

    @property
    def total(self) -> int:
        return self.warmup + self.events


# Records: writer (seq, called_ns, returned_ns); watcher (seq, arrived_ns, committed_ns or 0).
Record = tuple[int, int, int]


# -- the watcher process ---------------------------------------------------------------------


def watcher(plan: Plan, link: Connection) -> list[Record]:
    """Receive ``plan.total`` events, stamp and acknowledge each one."""
    if plan.case.consume == "xread":
        return _watch_xread(plan, link)
    if plan.case.consume == "xread_async":
        return asyncio.run(_watch_xread_async(plan, link))
    if plan.case.consume == "watch":
        return asyncio.run(_watch_drive(plan, link))
    return _watch_sync_drive(plan, link)


def _seq_of(path: str) -> int:
    return int(path.rpartition("/")[2])


def _committed_ns(event: DriveEvent) -> int:
    return round(event.timestamp * 1_000_000) * 1000


def _entry_seq(reply: Any) -> tuple[str, int]:
    if not reply:
        raise TimeoutError(f"no entry within {PEER_TIMEOUT:.0f} s")
    [(_stream, [(entry_id, fields)])] = reply
    return entry_id, int(fields["seq"])


def _watch_xread(plan: Plan, link: Connection) -> list[Record]:
    client = redis.Redis.from_url(plan.redis_url, decode_responses=True, protocol=2)
    records: list[Record] = []
    try:
        client.ping()
        link.send("ready")
        last = "0-0"
        while len(records) < plan.total:
            reply = client.xread({plan.stream: last}, count=1, block=int(PEER_TIMEOUT * 1000))
            arrived = clock_ns()
            last, seq = _entry_seq(reply)
            records.append((seq, arrived, 0))
            link.send(seq)
    finally:
        client.close()
    return records


async def _watch_xread_async(plan: Plan, link: Connection) -> list[Record]:
    client = aioredis.Redis.from_url(plan.redis_url, decode_responses=True, protocol=2)
    records: list[Record] = []
    try:
        await client.ping()
        link.send("ready")
        last = "0-0"
        while len(records) < plan.total:
            reply = await client.xread({plan.stream: last}, count=1, block=int(PEER_TIMEOUT * 1000))
            arrived = clock_ns()
            last, seq = _entry_seq(reply)
            records.append((seq, arrived, 0))
            link.send(seq)
    finally:
        await client.aclose()
    return records


async def _watch_drive(plan: Plan, link: Connection) -> list[Record]:
    records: list[Record] = []
    async with Drive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        await drive.exists("warm-up")  # connect (and measure the clock offset) first
        async with drive.watch() as events:
            link.send("ready")
            while len(records) < plan.total:
                event = await events.next(PEER_TIMEOUT)
                arrived = clock_ns()
                if event is None:
                    raise TimeoutError(f"no event within {PEER_TIMEOUT:.0f} s")
                seq = _seq_of(event.path)
                records.append((seq, arrived, _committed_ns(event)))
                link.send(seq)
    return records


def _watch_sync_drive(plan: Plan, link: Connection) -> list[Record]:
    records: list[Record] = []
    with SyncDrive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        drive.exists("warm-up")
        with drive.watch() as events:
            link.send("ready")
            while len(records) < plan.total:
                event = events.next(PEER_TIMEOUT)
                arrived = clock_ns()
                if event is None:
                    raise TimeoutError(f"no event within {PEER_TIMEOUT:.0f} s")
                seq = _seq_of(event.path)
                records.append((seq, arrived, _committed_ns(event)))
                link.send(seq)
    return records


# -- the writer process ----------------------------------------------------------------------


def _await_peer(link: Connection, what: str) -> Any:
    if not link.poll(PEER_TIMEOUT):
        raise TimeoutError(f"no {what} from the watcher within {PEER_TIMEOUT:.0f} s")
    return link.recv()


def writer(plan: Plan, link: Connection) -> list[Record]:
    """Write ``plan.total`` times, each after the previous one was received and a gap."""
    if plan.case.write == "xadd":
        return _write_xadd(plan, link)
    return asyncio.run(_write_drive(plan, link))


def _write_xadd(plan: Plan, link: Connection) -> list[Record]:
    client = redis.Redis.from_url(plan.redis_url, decode_responses=True, protocol=2)
    records: list[Record] = []
    try:
        client.ping()
        _await_peer(link, "ready signal")
        for seq in range(plan.total):
            time.sleep(plan.gap)
            called = clock_ns()
            client.xadd(plan.stream, {"seq": seq})
            returned = clock_ns()
            records.append((seq, called, returned))
            if _await_peer(link, "acknowledgement") != seq:
                raise RuntimeError(f"entries out of order at {seq}")
    finally:
        client.close()
    return records


async def _write_drive(plan: Plan, link: Connection) -> list[Record]:
    workdir = Path(plan.workdir)
    (workdir / "lat").mkdir(parents=True)
    os.chdir(workdir)  # put() takes paths relative to the current directory
    payload = os.urandom(plan.case.size)
    put = plan.case.write == "put"
    records: list[Record] = []
    async with Drive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        await drive.exists("warm-up")
        _await_peer(link, "ready signal")
        for seq in range(plan.total):
            path = f"lat/{seq:06d}"
            if put:
                Path(path).write_bytes(payload)  # the local file to put, not timed
            time.sleep(plan.gap)
            called = clock_ns()
            if put:
                await drive.put(path)
            else:
                await drive.write_bytes(path, payload)
            returned = clock_ns()
            records.append((seq, called, returned))
            if _await_peer(link, "acknowledgement") != seq:
                raise RuntimeError(f"events out of order at {seq}")
    return records


# -- measuring and reporting -----------------------------------------------------------------

#: Measures per case, in µs: what each is, from the writer's and the watcher's stamps.
METRICS = ("latency", "call_to_return", "return_to_arrival", "call_to_commit", "commit_to_arrival")


def _measure(plan: Plan) -> dict[str, list[float]]:
    with Workers() as workers:
        watcher_end, writer_end = MP.Pipe()
        workers.spawn("watcher", watcher, plan, watcher_end)
        workers.spawn("writer", writer, plan, writer_end)
        watcher_end.close()
        writer_end.close()
        done = workers.wait(timeout=120 + plan.total * (plan.gap + 0.1))
    wrote: list[Record] = done["writer"]
    got: list[Record] = done["watcher"]
    if [r[0] for r in got] != list(range(plan.total)):
        raise RuntimeError(f"{plan.case.key}: events missing, repeated or out of order")
    samples: dict[str, list[float]] = {m: [] for m in METRICS}
    for (_, called, returned), (_, arrived, committed) in zip(
        wrote[plan.warmup :], got[plan.warmup :], strict=True
    ):
        samples["latency"].append((arrived - called) / 1000)
        samples["call_to_return"].append((returned - called) / 1000)
        samples["return_to_arrival"].append((arrived - returned) / 1000)
        if committed:
            samples["call_to_commit"].append((committed - called) / 1000)
            samples["commit_to_arrival"].append((arrived - committed) / 1000)
    return samples


def _timed(call: Callable[[], object], n: int, gap: float) -> Summary:
    samples = []
    for _ in range(n):
        time.sleep(gap)
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return Summary.of(samples)


async def _timed_async(call: Callable[[], Awaitable[object]], n: int, gap: float) -> Summary:
    samples = []
    for _ in range(n):
        time.sleep(gap)  # as the writer does: nothing else runs on this loop meanwhile
        started = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return Summary.of(samples)


async def _async_unit_costs(redis_url: str, n: int, gap: float) -> tuple[Summary, Summary]:
    client = aioredis.Redis.from_url(redis_url, protocol=2)
    try:
        await client.ping()
        ping = await _timed_async(client.ping, n, gap)
    finally:
        await client.aclose()
    hop = await _timed_async(lambda: anyio.to_thread.run_sync(int), n, gap)
    return ping, hop


def _unit_costs(
    redis_url: str, folder: Path, n: int, n_disk: int, gap: float
) -> dict[str, Summary]:
    """Time the steps a write is made of, one at a time, paced like the events."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    try:
        client.ping()
        ping = _timed(client.ping, n, gap)
    finally:
        client.close()
    ping_async, hop = asyncio.run(_async_unit_costs(redis_url, n, gap))
    names = (folder / f"f{i}" for i in itertools.count())

    def new_file() -> None:
        fd = os.open(next(names), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename_and_fsync_folder() -> None:
        source = next(names)
        source.write_bytes(b"x")
        os.replace(source, folder / "target")
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return {
        "PING round trip, redis-py": ping,
        "PING round trip, redis.asyncio": ping_async,
        "anyio.to_thread.run_sync hop (no-op)": hop,
        "new 1-byte file: write + fsync": _timed(new_file, n_disk, gap),
        "rename into a folder + fsync of the folder": _timed(rename_and_fsync_folder, n_disk, gap),
    }


def _unit_table(costs: dict[str, Summary]) -> Table:
    table = Table(
        ["step", "p50 µs", "p99 µs", "min µs", "max µs"],
        title="Unit costs: single steps timed in one process, paced like the events (the "
        "root's disk, the same server)",
    )
    for step, s in costs.items():
        table.add(step, fmt_us(s.p50), fmt_us(s.p99), fmt_us(s.min), fmt_us(s.max))
    return table


def run(ctx: Context) -> Result:
    events, warmup = (200, 10) if ctx.quick else (2000, 50)
    gap = QUICK_GAP_S if ctx.quick else GAP_S
    root = ctx.folder("root")
    costs = _unit_costs(ctx.redis_url, ctx.folder("disk"), events // 4, events // 10, gap)
    # per case and metric, one Summary per run
    runs: dict[str, dict[str, list[Summary]]] = {c.key: {m: [] for m in METRICS} for c in CASES}
    # per case, per run: the share of events that reached the watcher before the call returned
    early: dict[str, list[float]] = {c.key: [] for c in CASES}
    for index in range(ctx.runs):
        # Cases interleave run by run, so a slow spell of the machine hits them all alike.
        for case in CASES:
            drive_id = ctx.drive_id(case.key)
            plan = Plan(
                case=case,
                redis_url=ctx.redis_url,
                root=str(root),
                workdir=str(ctx.folder(f"work-{case.key}")),
                drive_id=drive_id,
                stream=drive_id.replace("lit://", "bench:"),
                warmup=warmup,
                events=events,
                gap=gap,
            )
            samples = _measure(plan)
            for metric, values in samples.items():
                if values:
                    runs[case.key][metric].append(Summary.of(values))
            after_return = samples["return_to_arrival"]
            early[case.key].append(sum(v < 0 for v in after_return) / len(after_return))
            p50 = runs[case.key]["latency"][-1].p50
            ctx.log(f"run {index + 1}/{ctx.runs}: {case.label}: p50 {fmt_us(p50)} µs")
    combined = {
        key: {m: Summary.across_runs(s) for m, s in metrics.items() if s}
        for key, metrics in runs.items()
    }
    return Result(
        name=BENCHMARK.name,
        title=BENCHMARK.title,
        intro=_intro(events, warmup, gap, ctx.runs),
        tables=[
            _latency_table(combined, runs),
            _breakdown_table(combined, early),
            _unit_table(costs),
        ],
        notes=_notes(combined, costs),
        targets=_targets(combined),
        data={
            "events_per_run": events,
            "warmup_per_run": warmup,
            "gap_s": gap,
            "runs": ctx.runs,
            "targets_us": {"p50": TARGET_P50_US, "p99": TARGET_P99_US},
            "unit_costs_us": {step: vars(s) for step, s in costs.items()},
            "cases": {
                c.key: {
                    "label": c.label,
                    "combined": {m: vars(s) for m, s in combined[c.key].items()},
                    "per_run": {m: [vars(s) for s in v] for m, v in runs[c.key].items() if v},
                    "arrived_before_return_per_run": early[c.key],
                }
                for c in CASES
            },
        },
    )


def _intro(events: int, warmup: int, gap: float, nruns: int) -> str:
    return (
        "From the call of `put()`/`write_bytes()` in one process to the event's arrival in a "
        "watcher in another process (both spawned for each case and run; the writer is always "
        "an async `Drive`, the watcher varies). Stamps are `time.time_ns()` "
        "(CLOCK_REALTIME: one clock for every process on the machine, and the clock of the "
        "server's `TIME`, which stamps each drive event with its commit). The writer waits "
        f"until the watcher has received each event, then {gap * 1000:g} ms, before the next "
        "call, so the watcher is always idle in a blocking read: latency, not queueing. "
        f"Each run measures {events} events after {warmup} unmeasured warm-up events; p50 and "
        f"p99 are the median over {nruns} run(s), min and max are over all events. The "
        "baseline is the floor under any Redis-stream watcher: a raw redis-py `XADD` in one "
        "process and `XREAD BLOCK` in another, on the same server in the same run. The server "
        "runs as the embedded one does (append-only file, fsynced every second); the drive "
        "root is a temporary folder on the disk named above, so `put()` pays real fsyncs.\n\n"
        "The gap matters: the longer a machine idles between events, the longer each step "
        "takes to wake up (a sleeping CPU, a journal commit, a thread hand-off), most of all "
        "on virtual machines. Events far apart, such as checkpoints, can see higher figures "
        "than these."
    )


def _targets(combined: dict[str, dict[str, Summary]]) -> list[Target]:
    """The watch issue's targets, met by every drive case: the slowest case's figure."""
    targets = []
    for metric, limit in (("p50", TARGET_P50_US), ("p99", TARGET_P99_US)):
        case = max(
            (c for c in CASES if c.is_drive),
            key=lambda c: getattr(combined[c.key]["latency"], metric),
        )
        figures = combined[case.key]
        value = getattr(figures["latency"], metric)
        base = combined[BASELINE.key]["latency"].p50
        targets.append(Target(
            f"event latency {metric}, from the call to the watcher, slowest case: {case.label}",
            f"{fmt_us(value)} µs", f"< {limit / 1000:g} ms", value < limit,
            f"the durable put itself: {fmt_us(figures['call_to_commit'].p50)} µs p50 from its "
            "call to its commit (a new file's fsync, a thread hop each way, a round trip); "
            f"then {fmt_us(figures['commit_to_arrival'].p50)} µs p50 to the watcher, where a "
            f"raw XADD → XREAD BLOCK takes {fmt_us(base)} µs p50 in all",
        ))  # fmt: skip
    return targets


def _target(value: float, limit: float) -> str:
    return "pass" if value < limit else "miss"


def _latency_table(
    combined: dict[str, dict[str, Summary]], runs: dict[str, dict[str, list[Summary]]]
) -> Table:
    base = combined[BASELINE.key]["latency"]
    table = Table(
        [
            "case",
            "p50 µs",
            "p99 µs",
            "min µs",
            "max µs",
            "p50 over runs",
            "p50 / base",
            "p99 / base",
            f"p50 < {TARGET_P50_US / 1000:g} ms",
            f"p99 < {TARGET_P99_US / 1000:g} ms",
        ],
        title="Latency from the call to the event's arrival",
    )
    for case in CASES:
        s = combined[case.key]["latency"]
        per_run = [r.p50 for r in runs[case.key]["latency"]]
        spread = f"{fmt_us(min(per_run))}..{fmt_us(max(per_run))}" if len(per_run) > 1 else "-"
        table.add(
            case.label,
            fmt_us(s.p50),
            fmt_us(s.p99),
            fmt_us(s.min),
            fmt_us(s.max),
            spread,
            fmt_ratio(s.p50 / base.p50),
            fmt_ratio(s.p99 / base.p99),
            _target(s.p50, TARGET_P50_US) if case.is_drive else "-",
            _target(s.p99, TARGET_P99_US) if case.is_drive else "-",
        )
    return table


def _breakdown_table(
    combined: dict[str, dict[str, Summary]], early: dict[str, list[float]]
) -> Table:
    table = Table(
        [
            "case",
            "call → return p50",
            "call → commit p50",
            "commit → arrival p50",
            "return → arrival p50",
            "return → arrival p99",
            "arrived before return",
        ],
        title="Where the time goes, µs (commit: the server's clock in the commit script; "
        "negative: the event arrived before the call returned)",
    )
    for case in CASES:
        s = combined[case.key]
        split = (
            (fmt_us(s["call_to_commit"].p50), fmt_us(s["commit_to_arrival"].p50))
            if case.is_drive
            else ("-", "-")
        )
        table.add(
            case.label,
            fmt_us(s["call_to_return"].p50),
            *split,
            fmt_us(s["return_to_arrival"].p50),
            fmt_us(s["return_to_arrival"].p99),
            f"{statistics.median(early[case.key]):.0%}",
        )
    return table


def _notes(combined: dict[str, dict[str, Summary]], costs: dict[str, Summary]) -> list[str]:
    base = combined[BASELINE.key]["latency"].p50
    aio = combined["redis_asyncio"]["latency"].p50
    put = combined["put_watch"]
    notes = [
        f"put(4 KiB) → Drive.watch, {fmt_us(put['latency'].p50)} µs p50: "
        f"{fmt_us(put['call_to_commit'].p50)} µs pass in the writer before the commit script "
        f"runs, {fmt_us(put['commit_to_arrival'].p50)} µs from the commit to the watcher "
        f"({fmt_ratio(put['commit_to_arrival'].p50 / base)} a whole baseline XADD → XREAD, "
        f"{fmt_ratio(put['commit_to_arrival'].p50 / aio)} its redis.asyncio version). The unit "
        f"costs price the writer's steps: a Redis round trip "
        f"{fmt_us(costs['PING round trip, redis.asyncio'].p50)} µs, a thread hop "
        f"{fmt_us(costs['anyio.to_thread.run_sync hop (no-op)'].p50)} µs, an fsync of a new "
        f"file {fmt_us(costs['new 1-byte file: write + fsync'].p50)} µs, of a folder "
        f"{fmt_us(costs['rename into a folder + fsync of the folder'].p50)} µs.",
        f"The same XADD → XREAD BLOCK takes {fmt_us(aio)} µs p50 with a redis.asyncio watcher "
        f"and {fmt_us(base)} µs with a synchronous one: the floor for an asyncio watcher, "
        "before any asyncdrive code runs.",
    ]
    sync_extra = statistics.median(
        combined[f"{w}_sync_watch"]["commit_to_arrival"].p50
        - combined[f"{w}_watch"]["commit_to_arrival"].p50
        for w in ("put", "write1")
    )
    hop = (
        f"adds {fmt_us(sync_extra)} µs p50"
        if sync_extra > 0
        else "adds no measurable time (the difference is within the noise)"
    )
    notes.append(
        f"SyncDrive.watch {hop} to the delivery (commit → arrival) over Drive.watch: the hop "
        "from the background event-loop thread to the caller's thread."
    )
    return notes


BENCHMARK = Benchmark(name="watch_latency", title="Watch latency", run=run)

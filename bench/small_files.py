"""Small files: put and get of many 4 KiB files, alone and concurrently, against a floor.

The floor is the least a durable put can do (write a temporary file, fsync it, rename it
into place, one Redis round trip to record it) and the least a get can do (one Redis round
trip to find the file, then copy it), written with plain blocking calls in one thread. Each
case runs in spawned worker processes, which connect first, then stamp `clock_ns` just
before their first file and just after their last: the rate is the files over the time from
the earliest start to the latest end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from asyncdrive import Drive, SyncDrive

from .harness import MP, Benchmark, Context, Result, Table, Target, Workers, clock_ns, fmt_runs

#: The issue's targets: reported as pass/miss, never asserted.
TARGET_VS_FLOOR = 0.7
TARGET_VS_SEQUENTIAL = 2.0

FILE_SIZE = 4096
#: The issue asks for 10,000 files; a full run moves 2,000 per case and run, to keep the
#: suite's full run within minutes on a shared machine (a 4 KiB put costs the same whether
#: it is the 100th or the 10,000th). ``BENCH_SMALL_FILES=10000`` measures the issue's count.
FULL_FILES = int(os.environ.get("BENCH_SMALL_FILES", "2000"))
QUICK_FILES = 100
TASKS = 64
THREADS = 8
PROCESSES = 8
#: The processes that share the `TASKS` tasks in the case of tasks in several processes: one
#: a core (here 2), the way to put every core to work (the tasks of one process share one
#: interpreter lock).
TASK_PROCESSES = max(2, os.cpu_count() or 2)


@dataclass(frozen=True)
class Case:
    """One way of moving the files: who does it, and how many at once."""

    key: str
    label: str
    kind: str  # "floor" | "sequential" | "tasks" | "threads" | "processes" | "folder"
    width: int = 1  # tasks or threads in each process
    processes: int = 1


CASES = (
    Case("floor", "floor: temp file + fsync + rename + 1 round trip / 1 round trip + copy",
         "floor"),
    Case("sequential", "Drive, sequential", "sequential"),
    Case("tasks", f"Drive, {TASKS} asyncio tasks", "tasks", TASKS),
    Case("threads", f"SyncDrive, {THREADS} threads", "threads", THREADS),
    Case("processes", f"SyncDrive, {PROCESSES} processes", "processes", 1, PROCESSES),
    Case("process_tasks",
         f"Drive, {TASK_PROCESSES} processes x {TASKS // TASK_PROCESSES} asyncio tasks", "tasks",
         TASKS // TASK_PROCESSES, TASK_PROCESSES),
    Case("folder", "Drive, the whole folder in one call: put(folder) / get(folder)", "folder"),
)  # fmt: skip
CASE = {c.key: c for c in CASES}
OPS = ("put", "get")


@dataclass(frozen=True)
class Plan:
    """What one worker moves (it pickles): files ``first`` to ``first + count - 1``."""

    op: str  # "put" | "get"
    kind: str
    width: int
    redis_url: str
    root: str
    drive_id: str
    source: str  # the local files to put
    dest: str  # where gets write
    first: int
    count: int
    #: How many processes share the files, each with ``width`` tasks or threads
    #: (`measure` splits the plan between them).
    processes: int = 1

    def names(self) -> list[str]:
        return [file_name(i) for i in range(self.first, self.first + self.count)]


# Stamps: (first file started, last file done), CLOCK_REALTIME nanoseconds.
Span = tuple[int, int]


def file_name(index: int) -> str:
    return f"f{index:05d}.bin"


def make_files(folder: Path, n: int) -> None:
    """Write ``n`` files of random bytes, `FILE_SIZE` each, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / file_name(i)).write_bytes(os.urandom(FILE_SIZE))


# -- the floor -------------------------------------------------------------------------------


def _floor_key(plan: Plan) -> str:
    return plan.drive_id.replace("lit://", "bench:floor:")


def floor_worker(plan: Plan) -> Span:
    """Put or get the plan's files the least costly durable way, in one thread."""
    client = redis.Redis.from_url(plan.redis_url, protocol=2)
    store = Path(plan.root) / "floor" / plan.drive_id.removeprefix("lit://")
    tmp_dir = store / ".tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    key = _floor_key(plan)
    source, dest = Path(plan.source), Path(plan.dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        client.ping()
        started = clock_ns()
        for name in plan.names():
            if plan.op == "put":
                data = (source / name).read_bytes()
                tmp = tmp_dir / f"{name}.{uuid.uuid4().hex}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, store / name)
                client.hset(key, name, len(data))
            else:
                if client.hget(key, name) is None:
                    raise FileNotFoundError(name)
                shutil.copyfile(store / name, dest / name)
        return started, clock_ns()
    finally:
        client.close()


# -- asyncdrive ------------------------------------------------------------------------------


def drive_worker(plan: Plan, barrier: Any = None) -> Span:
    """Put or get the plan's files with asyncdrive, as ``plan.kind`` says."""
    if plan.kind in ("sequential", "tasks", "folder"):
        return asyncio.run(_async_worker(plan, barrier))
    if plan.kind == "threads":
        return _threads_worker(plan)
    return _sync_worker(plan, barrier)


#: The drive folder every case puts its files into, and gets them from.
DRIVE_FOLDER = "small"


def _drive_path(name: str) -> str:
    return f"{DRIVE_FOLDER}/{name}"


async def _async_worker(plan: Plan, barrier: Any = None) -> Span:
    source, dest = Path(plan.source), Path(plan.dest)
    names = iter(plan.names())

    async def mover(drive: Drive) -> None:
        for name in names:  # shared: each task takes the next file
            if plan.op == "put":
                await drive.put(source / name, to=_drive_path(name))
            else:
                await drive.get(_drive_path(name), to=dest / name)

    async with Drive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        await drive.exists("warm-up")
        if barrier is not None:  # every process connected: start together
            barrier.wait(timeout=120)  # blocking: nothing else runs on this loop yet
        started = clock_ns()
        if plan.kind == "folder":  # the source holds exactly the plan's files
            if plan.op == "put":
                await drive.put(source, to=DRIVE_FOLDER)
            else:
                await drive.get(DRIVE_FOLDER, to=dest)
            return started, clock_ns()
        async with asyncio.TaskGroup() as group:
            for _ in range(plan.width):
                group.create_task(mover(drive))
        return started, clock_ns()


def _move_sync(drive: SyncDrive, plan: Plan, names: list[str]) -> None:
    source, dest = Path(plan.source), Path(plan.dest)
    for name in names:
        if plan.op == "put":
            drive.put(source / name, to=_drive_path(name))
        else:
            drive.get(_drive_path(name), to=dest / name)


def _threads_worker(plan: Plan) -> Span:
    names = plan.names()
    drives = [
        SyncDrive(plan.drive_id, root=plan.root, redis_url=plan.redis_url)
        for _ in range(plan.width)
    ]
    errors: list[BaseException] = []

    def thread_main(index: int) -> None:
        try:
            _move_sync(drives[index], plan, names[index :: plan.width])
        except BaseException as exc:
            errors.append(exc)

    try:
        for drive in drives:
            drive.exists("warm-up")
        threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(plan.width)]
        started = clock_ns()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ended = clock_ns()
    finally:
        for drive in drives:
            drive.close()
    if errors:
        raise errors[0]
    return started, ended


def _sync_worker(plan: Plan, barrier: Any) -> Span:
    with SyncDrive(plan.drive_id, root=plan.root, redis_url=plan.redis_url) as drive:
        drive.exists("warm-up")
        barrier.wait(timeout=120)  # every process connected: start together
        started = clock_ns()
        _move_sync(drive, plan, plan.names())
        return started, clock_ns()


# -- measuring -------------------------------------------------------------------------------


def measure(plan: Plan, n: int) -> float:
    """Run one case over ``n`` files (split between processes if it uses several); files/s."""
    timeout = 120 + n * 0.1
    with Workers() as workers:
        if plan.kind == "floor":
            workers.spawn("floor", floor_worker, plan)
        elif plan.processes == 1:
            workers.spawn(plan.kind, drive_worker, plan)
        else:
            barrier = MP.Barrier(plan.processes)
            per = -(-n // plan.processes)
            for i in range(plan.processes):
                count = max(0, min(per, n - i * per))
                part = replace(plan, first=i * per, count=count, processes=1)
                workers.spawn(f"process-{i}", drive_worker, part, barrier)
        spans: list[Span] = list(workers.wait(timeout=timeout).values())
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    return n / (elapsed / 1e9)


def fill(ctx: Context, root: Path, drive_id: str, source: Path, n: int) -> None:
    """Put the files into ``drive_id``, untimed, for gets to read."""
    plan = Plan("put", "tasks", TASKS, ctx.redis_url, str(root), drive_id, str(source), "",
                0, n)  # fmt: skip
    measure(plan, n)


def run(ctx: Context) -> Result:
    n = QUICK_FILES if ctx.quick else FULL_FILES
    root = ctx.folder("root")
    source = ctx.folder("source")
    ctx.log(f"writing {n} files of {FILE_SIZE} bytes")
    make_files(source, n)
    # per op and case, files/s per run
    rates: dict[str, dict[str, list[float]]] = {op: {c.key: [] for c in CASES} for op in OPS}
    # Every get case reads the same drive (and the floor its own store), filled untimed.
    get_drive = ctx.drive_id("small-get")
    fill(ctx, root, get_drive, source, n)
    floor_drive = ctx.drive_id("small-floor")
    floor_plan = Plan("put", "floor", 1, ctx.redis_url, str(root), floor_drive,
                      str(source), "", 0, n)  # fmt: skip
    measure(floor_plan, n)  # untimed: the floor's gets need its files
    for index in range(ctx.runs):
        # The order flips every run, so a slow spell of the disk does not always hit one case.
        order = CASES if index % 2 == 0 else CASES[::-1]
        for case in order:
            for op in OPS:
                if case.kind == "floor":
                    drive_id = ctx.drive_id("small-floor") if op == "put" else floor_drive
                else:
                    drive_id = ctx.drive_id(f"small-{case.key}") if op == "put" else get_drive
                plan = Plan(op, case.kind, case.width, ctx.redis_url, str(root), drive_id,
                            str(source), str(ctx.folder(f"got-{case.key}")), 0, n,
                            case.processes)  # fmt: skip
                # Each case starts with nothing waiting to be written (untimed): the gets
                # before it leave their copies unsynced (~8 MB a case), and past 32 MiB
                # waiting, puts fsync each new file instead of one syncfs for those of a
                # call (see `SyncTogether` in asyncdrive/_storage.py): the order of the cases
                # would decide the put rates.
                os.sync()
                rates[op][case.key].append(measure(plan, n))
        line = ", ".join(f"{op} {c.key} {rates[op][c.key][-1]:.0f}/s" for op in OPS for c in CASES)
        ctx.log(f"run {index + 1}/{ctx.runs}: {line}")
    # The files stay until the run's end: deleting tens of thousands now would slow the
    # file creations of the next benchmarks on some disks (see `file_creation_cost`).
    return _result(ctx, n, rates)


# -- reporting -------------------------------------------------------------------------------


def ratio_runs(a: list[float], b: list[float]) -> list[float]:
    """Per-run ratios a/b: each figure is compared with its baseline of the same run."""
    return [x / y for x, y in zip(a, b, strict=True)]


def fmt_x(value: float) -> str:
    return f"{value:.2f}x"


def spread(values: list[float], fmt: Any = fmt_x) -> str:
    return f"{fmt(min(values))}..{fmt(max(values))}" if len(values) > 1 else "-"


def verdict(value: float, target: float) -> str:
    return f"≥ {target:g}x: {'pass' if value >= target else 'miss'}"


def _table(op: str, rates: dict[str, list[float]], n: int) -> Table:
    table = Table(
        [
            "case",
            "files/s p50",
            "min",
            "max",
            "/ floor p50",
            "/ floor over runs",
            "/ sequential p50",
            "/ sequential over runs",
            "target",
        ],
        title=f"{op} of {n} files of 4 KiB: files per second, and ratios within each run",
    )
    for case in CASES:
        r = rates[case.key]
        vs_floor = ratio_runs(r, rates["floor"])
        vs_seq = ratio_runs(r, rates["sequential"])
        if case.kind == "sequential":
            target = verdict(statistics.median(vs_floor), TARGET_VS_FLOOR) + " floor"
        elif case.kind not in ("floor", "folder"):
            target = verdict(statistics.median(vs_seq), TARGET_VS_SEQUENTIAL) + " sequential"
        else:
            target = "-"
        table.add(
            case.label,
            f"{statistics.median(r):.0f}",
            f"{min(r):.0f}",
            f"{max(r):.0f}",
            fmt_x(statistics.median(vs_floor)),
            spread(vs_floor),
            fmt_x(statistics.median(vs_seq)) if case.kind != "floor" else "-",
            spread(vs_seq) if case.kind != "floor" else "-",
            target,
        )
    return table


#: What limits a case where it misses its target, in a sentence; the notes measure each.
LIMITS = {
    ("put", "sequential"): (
        "two thread wake-ups a put (its fsync must leave the event loop's thread; this VM "
        "wakes a halted vCPU slowly) and the commit script (~40 µs of the server's CPU, "
        "where the floor's HSET takes ~2): ~700 µs a put against the floor's ~460"
    ),
    ("get", "sequential"): "the owners' round trip and the link checks beside the floor's HGET",
    ("put", "tasks"): (
        "one interpreter lock for the event loop and the disk thread, ~230 µs of CPU a put; "
        "processes bring the second core"
    ),
    ("get", "tasks"): (
        "one interpreter lock: the event loop's thread is busy ~96% of the time, ~100 µs of "
        "CPU a get; 2 processes of 32 tasks each bring the second core"
    ),
    ("put", "threads"): (
        "one interpreter lock for 8 threads, handed over at each system call: the floor "
        "itself puts and gets slower from 8 threads than from one"
    ),
    ("put", "processes"): "2 cores, shared with the server: ~300 µs of CPU a put",
    ("get", "processes"): (
        "2 cores, shared with the server, one of them ~95% busy with a sequential get "
        "already; a SyncDrive call costs more CPU than an async one"
    ),
    ("put", "process_tasks"): "2 cores, shared with the server: ~300 µs of CPU a put",
    ("get", "process_tasks"): "2 cores, shared with the server",
}
LIMITS[("get", "threads")] = LIMITS[("put", "threads")]


def _targets(op: str, rates: dict[str, list[float]]) -> list[Target]:
    """The issue's targets for ``op``: sequential against the floor, the rest against it."""
    targets = []
    for case in CASES:
        if case.kind in ("floor", "folder"):
            continue
        base, goal = ("floor", TARGET_VS_FLOOR) if case.kind == "sequential" else (
            "sequential", TARGET_VS_SEQUENTIAL)  # fmt: skip
        ratios = ratio_runs(rates[case.key], rates[base])
        median = statistics.median(ratios)
        targets.append(Target(
            f"{op} of 4 KiB files: {case.label} / {base}", fmt_runs(ratios, fmt_x),
            f"≥ {goal:g}x", median >= goal, LIMITS[op, case.key],
        ))  # fmt: skip
    return targets


def _result(ctx: Context, n: int, rates: dict[str, dict[str, list[float]]]) -> Result:
    return Result(
        name=BENCHMARK.name,
        title=BENCHMARK.title,
        intro=_intro(n, ctx.runs),
        tables=[_table(op, rates[op], n) for op in OPS],
        notes=_notes(rates),
        targets=[target for op in OPS for target in _targets(op, rates[op])],
        data={
            "files": n,
            "file_size": FILE_SIZE,
            "runs": ctx.runs,
            "targets": {"vs_floor": TARGET_VS_FLOOR, "vs_sequential": TARGET_VS_SEQUENTIAL},
            "files_per_s_per_run": rates,
            "labels": {c.key: c.label for c in CASES},
        },
    )


def _intro(n: int, nruns: int) -> str:
    return (
        f"{n} local files of 4 KiB of random bytes (the issue's figure is 10,000; "
        "`BENCH_SMALL_FILES=10000` measures that many, a full run moves fewer to stay within "
        f"minutes) are put into a drive, and {n} files are got "
        "out of one, by spawned worker processes: one process for the sequential `Drive`, for "
        f"{TASKS} asyncio tasks sharing one `Drive`, and for {THREADS} threads with a "
        f"`SyncDrive` each; {PROCESSES} processes with a `SyncDrive` each, and "
        f"{TASK_PROCESSES} processes with {TASKS // TASK_PROCESSES} asyncio tasks each "
        "sharing a `Drive` (one process a core), which wait for one "
        "another before starting; and one process whose `Drive` moves the "
        "whole folder in one call, `put(folder)` and `get(folder)`. Each put case writes into "
        "a new drive; "
        "every get case reads the same drive, filled untimed before the first run, into a "
        "new local folder. The floor does in one thread, with blocking calls, the least a "
        "durable put must (read the local file, write a temporary file, fsync it, rename it "
        "into place, one `HSET`) and the least a get must (one `HGET`, `shutil.copyfile`); it "
        "neither hashes nor fsyncs the folder. Everything writes to the drive root's disk and "
        f"talks to the same server, in the same run; each case starts with nothing waiting "
        f"to be written (an untimed `sync()`). {nruns} run(s), the order of the cases "
        "reversed every other run; rates are the median, min and max over the runs, and "
        "every ratio is taken within a run, then its median reported."
    )


def _notes(rates: dict[str, dict[str, list[float]]]) -> list[str]:
    def med(op: str, key: str, base: str) -> str:
        return fmt_x(statistics.median(ratio_runs(rates[op][key], rates[op][base])))

    return [
        f"A sequential put reaches {med('put', 'sequential', 'floor')} of the floor. A put "
        "of a new small file (each put here) is one worker-thread call that, where a new "
        "file's fsync makes its name durable too (ext3/ext4, XFS, Btrfs: ext4 here), "
        "creates the file at its path (`O_EXCL`: it never replaces one), writes it, "
        "attaches its metadata (an extended attribute of 53 bytes, which ext4 keeps in "
        "the inode) and fsyncs it once; then one round trip to commit (Lua: checks, "
        "index, version, event); a replacement takes the path's commit lock first, in "
        "one more round trip. The floor has one fsync, one round trip and no thread hop. "
        "Counted in `/proc/diskstats`, the floor's put makes 4 disk writes (the file's "
        "data and inode, and the folder of its temporary name, which ext4 writes out at "
        "the first fsync of a new name's file) and a drive's put 4 too since 2026-12-05 "
        "(6 with an upload without a name linked into place and its folder fsynced, as on "
        "disks where a new name needs the folder's fsync; 8 before 2026-12-04). Writing in "
        "place took the worker-thread call from ~0.64 to ~0.33 ms, measured alone after "
        "many deletions, and a whole sequential put ~7% (~1.14 -> ~1.07 ms, measured "
        "interleaved, both 2026-12-05); what is left beyond the floor is the thread hop, "
        "the event loop's part and the commit script. Timed around each step of 2,000 "
        "sequential puts (2026-12-05, means): from the call to the worker thread's start "
        "~90 µs (~45 of it the thread's wake-up), the worker-thread call ~370 µs (the "
        "floor's write, fsync and rename ~370 too), from its end to the commit's sending "
        "~85 µs (~50 of it the event loop's wake-up), the commit ~180 µs (the floor's "
        "HSET with redis-py's blocking client ~130), the rest ~15 µs: ~740 µs against the "
        "floor's ~500. A thread's wake-up costs ~30 µs in this VM (two threads handing a "
        "token back and forth through queues: ~57 µs a round, measured), and the floor "
        "makes none; the disk call cannot run in the event loop's thread (an fsync can "
        "take milliseconds). That wake-up is what limits the ratio here: it lands on the "
        "other vCPU, idle and halted, which this VM (Firecracker, `haltpoll."
        "guest_halt_poll_ns=0` on its kernel command line) wakes slowly. A hop to a thread "
        "and back took ~62 µs, or ~17-26 µs with both threads held on one CPU (`taskset "
        "-c 0`); this whole benchmark run under `taskset -c 0` (the server too) put "
        "sequentially at 0.88x of the floor (0.73x..1.08x over runs) and got at 1.52x "
        "(2026-12-05; the concurrent cases then share one CPU and fall behind). Measured "
        "2026-12-04 (sequential, `thread_time`), a put took "
        "~0.18 ms of the event loop's CPU and ~0.35-0.6 ms in its worker-thread call, most "
        "of it the kernel's (creating, writing and fsyncing files: it varies with the "
        "disk's state, see the last note), and the server ~0.12 ms. Skipping the lock for "
        "a new file took a sequential put from ~1.26 to ~1.0 ms and the server's CPU per "
        "put from ~0.2 to ~0.12 ms (measured alone, the same day). The Lua calls go "
        "through the drive's own pipelined connection (`asyncdrive/_wire.py`): ~75 µs of "
        "CPU each, where redis-py's asyncio client took ~190 µs and its blocking one "
        "~130 µs for the same script (measured). Tried and not kept: sending the lock's "
        "request, then staging the upload in the worker thread while it travels "
        "(2026-12-03: ~5% faster sequentially, ~5% slower with 64 tasks); one fsync of a "
        "folder shared by the puts into it that wait at once, a group commit in the worker "
        "threads (2026-12-04: no faster with 64 tasks, measured interleaved with the code "
        "before; the kernel already makes a folder's fsync cheap when another has just "
        "written the folder out); a new small file written and fsynced in the event loop's "
        "own thread when no other put is in flight, as gets copy (2026-12-05: ~16% more "
        "sequential puts, 0.63x -> ~0.73x of the floor, measured interleaved, but 64 tasks "
        "~30% slower, their loop blocked during each such fsync; and an fsync can take "
        "seconds where a journal commits other files' dirty data with it, which no bound "
        "on the call's time can stop once it has started: the event loop must not make "
        "it). Measured in a prototype, not built: the fsync handed to the kernel as Linux "
        "AIO (`IOCB_CMD_FSYNC`, its completion read through an eventfd by the event loop, "
        "no thread of ours; the kernel's worker runs on the same CPU) made a sequential "
        "create, write and fsync of 4 KiB ~10% quicker than with a hop to a worker thread "
        "(~273 against ~303 µs; ~209 blocking the loop), so ~4% of a put, for system calls "
        "through ctypes with numbers per architecture and a fallback where AIO is refused.",
        f"A sequential get reaches {med('get', 'sequential', 'floor')} of the floor: one "
        "round trip for the owners, then the link checks of the drive path, a copy inside "
        "the kernel (`copy_file_range`) into a file without a name (`O_TMPFILE`) in the "
        "target's folder, and its link at the target; the floor's `shutil.copyfile` writes "
        "the target directly, with a blocking client. A temporary name then a rename, as "
        "until 2026-12-05, made two names instead of one: ~60 against ~45 µs for the disk "
        "calls of a 4 KiB copy, and ~12% fewer gets, sequential or with 64 tasks "
        "(measured interleaved). Since 2026-12-05 the copy of a file up to 64 KiB is made in the "
        "event loop's own thread, once a first get's worker thread has found the target's "
        "folder on this machine's disks (`QuickCalls` in `asyncdrive/_threads.py`; three copies "
        "slower than 1 ms within a second, or one over 10 ms, that waited, send the next ones "
        "to the threads for 10 s): the hop to a worker "
        "thread and back, two thread wake-ups, ~100 µs of wall time in this VM for a call "
        "that does nothing (~40 µs there, ~60 back, measured), cost more than the copy "
        "(~40 µs). A sequential get went from ~3,200 to ~4,400 files/s (measured "
        "interleaved), and 64 tasks stayed as fast (~8,300 either way). Before that, its "
        "copy was one worker-thread call. A get took ~0.5 ms of CPU, "
        "~0.23-0.25 ms of it in the event loop's thread, and its worker-thread call "
        "~0.18 ms (it was ~0.25 ms with a walk of `lstat`s for the link check and a copy "
        "that looked for the end of the file; measured 2026-12-03; the hop to a "
        "disk thread and back is ~70 µs of it, half what a `ThreadPoolExecutor` with "
        "`asyncio.wrap_future` took, and the owners' HGETALL ~75 µs on the drive's "
        "pipelined connection). Since 2026-12-04 the drive path is opened in one "
        "`openat2` from the top (no link allowed anywhere; the root's path has none), not "
        "three calls: a get makes 8 system calls in its worker thread, a put 16 (were 10 "
        "and 21). A folder get, which looks up all its owners in one round trip and "
        "copies 64 files per worker call, runs ~2-3x as fast as one file at a time.",
        f"Concurrency: put {med('put', 'tasks', 'sequential')} with {TASKS} tasks, "
        f"{med('put', 'threads', 'sequential')} with {THREADS} threads, "
        f"{med('put', 'processes', 'sequential')} with {PROCESSES} processes; get "
        f"{med('get', 'tasks', 'sequential')}, {med('get', 'threads', 'sequential')}, "
        f"{med('get', 'processes', 'sequential')}, each against the sequential rate; the "
        f"same {TASKS} tasks split between {TASK_PROCESSES} processes, put "
        f"{med('put', 'process_tasks', 'sequential')} and get "
        f"{med('get', 'process_tasks', 'sequential')}. A "
        "sequential `Drive` is mostly bound by CPU, not by waiting (its CPU time is ~70% "
        "of a put's wall time and ~95% of a get's, measured): tasks and threads of one "
        "process share "
        "one interpreter lock, so they can interleave that work but not add to it, and only "
        "processes bring the second core (the server shares it). A get one after the other "
        "keeps one core busy ~95% of its time: 2x that rate would take both cores with "
        "nothing lost to sharing them, and a `SyncDrive` call costs more CPU than an async "
        "one (see SyncDrive overhead): the 2x of 8 processes' gets is out of reach on 2 "
        "cores; the 8 threads' share one interpreter lock. With 64 tasks in one "
        "process, its event loop's thread is busy ~96% of the time during gets, each get "
        "~100 µs of CPU (about half of it the kernel's: opening, copying, linking), and the "
        "server ~5 µs: split between two processes, the same 64 tasks got ~1.4-2.1x the "
        "files and put ~1.1-1.4x (over four runs of the suite, 2026-12-05), not 2x: the "
        "server's "
        "commit (~65 µs of its CPU a put) and the client's ~230 µs (~110 in the event "
        "loop's thread, ~120 in the disk thread's, where the two wait for each other's "
        "interpreter lock more than they overlap) take most of both cores already "
        "(measured 2026-12-05, late). Concurrent tasks share "
        "the drive's one connection for their Lua calls and owner lookups, pipelined "
        "(~20 µs of CPU each with 64 at once, measured): with it, 64 tasks went from "
        "~1.1x to ~1.5x of the sequential put rate. The disk alone (write, "
        "fsync, rename, folder fsync, no Python) completes ~1,100-1,500 such files per "
        "second from one thread and ~2,000-2,500 from eight. With 64 tasks, the 8 disk "
        "threads and the event loop's thread contend for the interpreter lock at every "
        "system call: a put's worker-thread call took ~10-15 ms with 8 at once (~1 ms "
        "alone), and the event loop, though busy only ~30% of the time, resumed the task "
        "~5-7 ms after its call ended (measured with timestamps around the calls). Fewer "
        "system calls per put (see above) took 64 tasks from ~530 to ~650-870 files/s, "
        "~1.6x to ~1.7-1.95x of the sequential rate, which rose too; 4 or 2 disk threads "
        "instead of 8 were no faster (again 2026-12-04, and 16 neither). With 64 tasks, "
        "puts of new files each in a call of their own were bound by the disk: "
        "~1,850-1,950 files/s, where the disk alone does ~2,000-2,500 from eight threads "
        "(its flushes: two fsyncs a file). Since 2026-12-05 the new files of concurrent "
        "puts are installed together where the root is on a local filesystem, as a folder "
        "put's are: one call at a time, each folder fsynced once per call (one fsync a "
        "file and a few per call): ~2,300-2,600 files/s (measured alone). Written in "
        "place (see above) and, in one call, all written before the first is fsynced "
        "(the disk starting on each as it is written, so the fsyncs find most of the "
        "writing done: 32 files ~1.7-2x as fast as an fsync after each, measured without "
        "Python), ~3,800 (measured interleaved with one fsync after each file, ~2,400). "
        "Since the evening of 2026-12-05, the files of one such call (two or more, on this "
        "machine's disks, Linux 5.8+, with at most 32 MiB of the page cache waiting to be "
        "written) are made durable by one syncfs of the filesystem instead of an fsync "
        "each (`SyncTogether` in `asyncdrive/_storage.py`; a failed syncfs falls back to "
        "the fsyncs), and do not start their writing one by one: it writes them in a few "
        "large requests and flushes the disk's cache once. The call took ~120 instead of "
        "~260 µs a file (32 new files a call, measured without the event loop; ~210 with "
        "each file's writing started as written), and 64 tasks ~3,500 -> ~5,000 files/s, "
        "a folder put ~3,300 -> ~4,400 (measured interleaved). 64 tasks are then bound by "
        "the interpreter lock: the worker thread is busy ~85% of the time, its calls "
        "taking ~190 µs a file against ~95 alone, the event loop's part of each put "
        "(~100 µs) holding the lock meanwhile. "
        "Commands that tasks queue on the drive's connection in one turn of the event loop "
        "go out in one write: ~7% more puts and ~10% more gets with 64 tasks (measured "
        "interleaved). A second call in flight for new files was no faster (~3%, within "
        "the noise, for more CPU; 2026-12-05). Gets of small "
        "files by concurrent tasks share worker-thread calls where the root is on a local "
        "filesystem (2026-12-04, `CallBatcher` in `asyncdrive/_threads.py`; on NFS and the "
        "like, where copies mostly wait, they stay side by side): one call in flight at a "
        "time, a get "
        "alone at once, those that arrive meanwhile together in the next call (up to 64 "
        "files): one thread hop per batch, and one disk thread taking turns with the event "
        "loop for the interpreter lock instead of eight. 64 tasks went from ~4,500 to "
        "~6,000-8,000 files/s (1.3x to ~2x of the sequential rate, measured alone); with "
        "2 or 3 such calls in flight, ~5,500 (measured), and calls of 16 copies with "
        "several in flight were no faster on 2026-12-03, when other costs dominated. The "
        "disk threads wake the event loop once for all the outcomes that arrive before it "
        "takes them (~3-6% more with 64 tasks). An async "
        "`Drive`'s disk calls share 8 "
        "worker threads (anyio's default of 40 made 64 concurrent gets up to twice as slow, "
        "from contention for the interpreter lock); a `SyncDrive` makes them in the calling "
        "thread, which waits for them anyway (this took the 8 threads from 0.75x to ~1.3x "
        "for put, and the 8 processes from ~1.2x to ~2x). Tried on 2026-12-05 and not "
        "adopted: the one-shot calls of several threads made on one shared event-loop "
        "thread (as watches are), where they interleave like tasks: with 8 threads ~1.5x "
        "the gets of a loop per thread (about the sequential rate, still far from 2x), but "
        "~15% fewer with 2 threads, and as many puts. Nor (the evening of 2026-12-05) the "
        "new files of several threads' puts installed together by whichever thread comes "
        "first, the others waiting, one syncfs for them all: ~12% more puts with 8 threads "
        "(~1,950 -> ~2,200 files/s, measured interleaved), ~1.5x of one thread. Since the "
        "gets of an async `Drive` "
        "copy small files in the event loop's thread (see above), its sequential rate, "
        "which these ratios divide by, rose by a third: the same concurrent rates make "
        "smaller ratios. Threads cost the floor as much: its get (redis-py's blocking "
        "client and `shutil.copyfile`) made ~5,600 files/s from one thread and ~3,070 from "
        "8 (their CPU per file up from ~150 to ~450 µs, most of it the kernel's: the "
        "interpreter lock handed over at each system call, each time a wake-up on the "
        "other vCPU); a `SyncDrive` made ~4,960 and ~3,150 (~175 -> ~400 µs) the same day "
        "(2026-12-05, measured alone). For small files, use tasks or processes.",
        f"One call for the whole folder: put {med('put', 'folder', 'sequential')} and get "
        f"{med('get', 'folder', 'sequential')} of the sequential rate. A folder put stores "
        "its small files in batches of 32, 8 batches at a time (`FOLDER_CONCURRENCY`): one "
        "round trip for the locks of a batch, one worker-thread call to write its new "
        "files in place and make them durable once all are written (one syncfs, see "
        "above; a replaced file staged and renamed in), one round trip for their "
        "commits; a folder get reads the owners of all its files in one round trip, then "
        "copies them one at a time, 64 per worker-thread call (side by side they were no "
        "faster: a get is mostly CPU). One file per call and per round trip, as before "
        "(2026-12-03, 2,000 files of 4 KiB, measured alone), put ~780 and get ~2,900 files/s; "
        "in batches ~1,200-1,500 and ~5,200.",
        "The disk's own state moves these figures: each put and get creates one file, as "
        "the floor does, and on an ext4 without a journal (as here, see the machine line) "
        "the kernel skips, when it allocates an inode, those freed in the last minute or "
        "more (`recently_deleted()`, seen with `perf`). After thousands of deletions (a "
        "test run, a benchmark's clean-up) creating an empty file cost ~0.3-0.9 ms of "
        "kernel CPU for minutes, against ~25 µs on a quiet disk (measured 2026-12-03), "
        "which slows a floor put of ~0.6 ms as much as a drive's. The line above each "
        "section says how long one creation took just before it, in a new folder of the "
        "run's scratch space (folders elsewhere on the disk can be faster or slower: the "
        "cost is per block group); the suite deletes its files only at the end.",
    ]


#: Five runs: its figures move most from run to run, and a run takes ~15 s.
BENCHMARK = Benchmark(name="small_files", title="Small files", run=run, runs=5)

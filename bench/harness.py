"""What every benchmark shares: server, scratch space, workers, statistics and reports.

A benchmark module exports ``BENCHMARK = Benchmark(name, title, run)``; ``run(ctx)`` gets a
`Context` (the server's URL, a scratch folder, quick or full, how many runs) and returns a
`Result`: tables already formatted for reading, notes, and the raw figures for the JSON.

Timing across processes uses `clock_ns` (``CLOCK_REALTIME``): on one machine it is one
system-wide clock, comparable between processes and with the server's ``TIME``, which stamps
every drive event. ``time.perf_counter`` is per-process and must not be compared that way.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

import asyncdrive

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"

#: Worker processes are spawned: a clean interpreter, as a separate program would be.
MP = multiprocessing.get_context("spawn")

#: Nanoseconds on CLOCK_REALTIME: comparable across processes and with the server's TIME.
clock_ns = time.time_ns


class BenchError(RuntimeError):
    """A benchmark could not measure (a worker failed or timed out)."""


# -- statistics ------------------------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Return the ``q`` quantile of ascending ``sorted_values`` by nearest rank.

    The p99 of 2000 samples is the 1980th smallest: always an observed value.
    """
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Summary:
    """p50, p99, min and max of a set of samples (or of several runs, see `across_runs`)."""

    n: int
    p50: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        ordered = sorted(values)
        return cls(
            len(ordered), quantile(ordered, 0.5), quantile(ordered, 0.99), ordered[0], ordered[-1]
        )

    @classmethod
    def across_runs(cls, runs: Sequence[Summary]) -> Summary:
        """Median of the runs' p50 and p99; min and max over every sample of every run."""
        return cls(
            sum(r.n for r in runs),
            statistics.median(r.p50 for r in runs),
            statistics.median(r.p99 for r in runs),
            min(r.min for r in runs),
            max(r.max for r in runs),
        )


def fmt_us(value: float) -> str:
    """Format microseconds for a table: whole numbers, one decimal below 10."""
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.1f}x"


def per_run_ratios(values: Sequence[float], baselines: Sequence[float]) -> list[float]:
    """Return ``values[i] / baselines[i]``: each figure against its baseline of the same run."""
    return [v / b for v, b in zip(values, baselines, strict=True)]


def fmt_runs(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """Format the median of per-run figures with their min and max: ``1.10x (1.05..1.20)``."""
    median = fmt(statistics.median(values))
    return f"{median} ({fmt(min(values))}..{fmt(max(values))})" if len(values) > 1 else median


def within(value: float, limit: float, unit: str = "x") -> str:
    """Return ``"pass"`` or ``"miss"`` against an upper limit, with the limit: ``≤ 1.5x: pass``."""
    return f"≤ {limit:g}{unit}: {'pass' if value <= limit else 'miss'}"


# -- results ---------------------------------------------------------------------------------


@dataclass
class Table:
    """A table of preformatted cells; the first column is text, the others are figures."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def text(self) -> str:
        widths = [
            max(len(r[i]) for r in [self.columns, *self.rows]) for i in range(len(self.columns))
        ]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "  ".join([first, *rest]).rstrip()

        rule = "  ".join("-" * w for w in widths)
        out = [self.title] if self.title else []
        return "\n".join([*out, line(self.columns), rule, *(line(r) for r in self.rows)])

    def markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        align = "|---|" + "---:|" * (len(self.columns) - 1)
        out = [f"**{self.title}**", ""] if self.title else []
        return "\n".join([*out, line(self.columns), align, *(line(r) for r in self.rows)])


@dataclass(frozen=True)
class Target:
    """One of the issue's targets as a run measured it: a row of BENCHMARKS.md's summary.

    ``limit`` says, where the target is missed, what limits the figure, in a sentence (the
    benchmark's notes give the measurements behind it).

    Example:
        >>> Target("sequential put / floor", "0.63x (0.61x..0.71x)", "≥ 0.7x", met=False,
        ...        limit="two thread wake-ups a put, which the floor does not make")
    """

    what: str
    measured: str
    goal: str
    met: bool
    limit: str = ""
    #: In how many of how many runs the figure met the goal, where it is taken per run:
    #: a median that passes in some runs only is shown as such.
    runs_met: tuple[int, int] | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.met else "miss"

    @property
    def verdict_markdown(self) -> str:
        """``**pass**``, or ``**miss** (2 of 5 runs met it)`` where the runs disagree."""
        text = f"**{self.verdict}**"
        if self.runs_met is not None and 0 < self.runs_met[0] < self.runs_met[1]:
            text += f" ({self.runs_met[0]} of {self.runs_met[1]} runs met it)"
        return text


@dataclass
class Result:
    """What a benchmark reports: prose, tables and notes to read, ``data`` for the JSON."""

    name: str
    title: str
    intro: str
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: What else ran meanwhile (see `CpuMeter`): filled in by the runner.
    background: str = ""
    #: Charts drawn by the benchmark: (caption, path relative to BENCHMARKS.md), shown as
    #: images in its markdown section and as paths in the terminal.
    charts: list[tuple[str, str]] = field(default_factory=list)
    #: The issue's targets it measures, for the summary at the top of BENCHMARKS.md.
    targets: list[Target] = field(default_factory=list)


@dataclass
class Context:
    """What a benchmark gets: the server, a scratch folder, and how much to measure."""

    quick: bool
    runs: int
    redis_url: str
    scratch: Path
    log: Callable[[str], None]
    #: Where charts go (PNG); None when the run writes no files (``--no-write``).
    charts: Path | None = None
    #: The folder of the BENCHMARKS.md this run writes (None: none), for relative links.
    markdown_dir: Path | None = None

    def folder(self, label: str) -> Path:
        """Return a new empty folder under the scratch folder (e.g. a drive root)."""
        path = self.scratch / f"{label}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def drive_id(self, label: str) -> str:
        """Return a drive id no other measurement uses."""
        return f"lit://bench-{label}-{uuid.uuid4().hex[:10]}"

    def chart_path(self, name: str) -> Path | None:
        """Return where to save chart ``name`` (a PNG), or None if this run writes no files.

        A quick run that writes no BENCHMARKS.md names it ``<name>-quick.png``, as its JSON
        is ``latest-quick.json``, so that a smoke run never replaces a full run's chart.
        """
        if self.charts is None:
            return None
        suffix = "-quick" if self.quick and self.markdown_dir is None else ""
        return self.charts / f"{name}{suffix}.png"

    def chart_link(self, path: Path) -> str:
        """Return ``path`` as BENCHMARKS.md links it: relative to it (as is if none is written)."""
        if self.markdown_dir is None:
            return str(path)
        return Path(os.path.relpath(path, self.markdown_dir)).as_posix()


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of the suite: ``run(ctx)`` measures and returns a `Result`."""

    name: str
    title: str
    run: Callable[[Context], Result]
    #: How many runs a full run makes (``--runs`` sets another number for all).
    runs: int = 3


# -- the server ------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # Linux: SIGTERM the server if the bench is killed outright (SIGKILL runs no finally).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """The server the embedded default runs (``server_binary()``), private to this run.

    It listens on a unix socket in ``folder`` (or on a free loopback TCP port), keeps an
    append-only file fsynced every second as the embedded server does, and runs in its own
    session so that Ctrl-C reaches the bench, which stops it last.
    """

    def __init__(self, folder: Path, *, tcp: bool = False) -> None:
        self.folder = folder
        self.tcp = tcp
        if tcp:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port: int = s.getsockname()[1]
            self.url = f"redis://127.0.0.1:{self.port}"
        else:
            self.sock = folder / "s.sock"
            self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def transport(self) -> str:
        return "loopback TCP" if self.tcp else "unix socket"

    def start(self, timeout: float = 15.0) -> None:
        listen = (
            ["--port", str(self.port), "--bind", "127.0.0.1"]
            if self.tcp
            else ["--port", "0", "--unixsocket", str(self.sock)]
        )
        self.proc = subprocess.Popen(
            [asyncdrive.server_binary(), *listen, "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"the server did not start on {self.url}") from None
                time.sleep(0.01)
            finally:
                client.close()

    def version(self) -> str:
        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            info: dict[str, Any] = client.info("server")
        finally:
            client.close()
        if "valkey_version" in info:
            return f"Valkey {info['valkey_version']}"
        return f"Redis {info.get('redis_version', '?')}"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- worker processes ------------------------------------------------------------------------


def _worker_main(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        value = fn(*args)
    except KeyboardInterrupt:
        return  # Ctrl-C reached the whole process group: the bench reports it
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("ok", value))
    finally:
        conn.close()


class Worker:
    """A spawned process running ``fn(*args)``, whose return value `Workers.wait` collects."""

    def __init__(self, name: str, process: BaseProcess, conn: Connection) -> None:
        self.name = name
        self.process = process
        self.conn = conn


class Workers:
    """Spawned worker processes, all gone when the ``with`` block ends, even on Ctrl-C.

    Example:
        >>> with Workers() as workers:
        ...     a = workers.spawn("reader", read, plan)
        ...     b = workers.spawn("writer", write, plan)
        ...     got = workers.wait(timeout=60)  # {"reader": ..., "writer": ...}

    ``fn`` must be a module-level function; arguments and results must pickle.
    """

    def __init__(self) -> None:
        self._workers: list[Worker] = []

    def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Worker:
        receiver, sender = MP.Pipe(duplex=False)
        process = MP.Process(
            target=_worker_main, args=(sender, fn, args), name=f"bench-{name}", daemon=True
        )
        process.start()
        sender.close()
        worker = Worker(name, process, receiver)
        self._workers.append(worker)
        return worker

    def wait(self, timeout: float) -> dict[str, Any]:
        """Return every worker's result by name; raise `BenchError` as soon as one fails."""
        deadline = time.monotonic() + timeout
        pending = {w.conn: w for w in self._workers}
        results: dict[str, Any] = {}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(w.name for w in pending.values())
                raise BenchError(f"workers still running after {timeout:.0f} s: {names}")
            for conn in wait(list(pending), timeout=remaining):
                assert isinstance(conn, Connection)
                worker = pending.pop(conn)
                try:
                    status, value = conn.recv()
                except EOFError:
                    worker.process.join(5)
                    raise BenchError(
                        f"worker {worker.name} died (exit code {worker.process.exitcode})"
                    ) from None
                if status == "error":
                    raise BenchError(f"worker {worker.name} failed:\n{value}")
                results[worker.name] = value
        return results

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self._workers:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers.clear()


# -- the machine -----------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    found = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def _memory() -> str:
    found = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return f"{int(found.group(1)) / 2**20:.1f} GiB" if found else "?"


def _mount(path: Path) -> tuple[str, str]:
    """Return the device and the filesystem type holding ``path`` (from /proc/mounts)."""
    best, device, kind = "", "?", "?"
    target = str(path.resolve())
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, device, kind = mount, parts[0], parts[2]
    return device, kind


def _filesystem(path: Path) -> str:
    """Return the type of the filesystem holding ``path``, and ", no journal" for an ext4
    mounted without one (Linux; see `file_creation_cost`), or "?"."""
    device, kind = _mount(path)
    jbd2 = Path("/proc/fs/jbd2")
    if kind != "ext4" or not device.startswith("/dev/") or not jbd2.is_dir():
        return kind
    name = Path(device).resolve().name
    journaled = any(entry.name.startswith(f"{name}-") for entry in jbd2.iterdir())
    return kind if journaled else f"{kind}, no journal"


def file_creation_cost(folder: Path, count: int = 200) -> float:
    """Return the median time, in µs, to create an empty file in ``folder`` (made here).

    How the disk is doing: an ext4 without a journal skips the inodes freed in the last
    minute or more when it allocates one (the kernel's ``recently_deleted()``), so after
    thousands of deletions creating a file can cost ~30x more for a while. The files are
    left in place: deleting them would add to what the next creation skips.
    """
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    for i in range(count):
        started = time.perf_counter_ns()
        os.close(os.open(folder / f"probe-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times) / 1e3


def _git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    with contextlib.suppress(OSError):
        revision = git("rev-parse", "--short", "HEAD")
        if revision:
            dirty = git("status", "--porcelain", "--untracked-files=no")
            return f"git {revision}" + (", with uncommitted changes" if dirty else "")
    return "not a git checkout"


def machine(server: Server, root: Path) -> dict[str, str]:
    """Describe this machine and software, for the report."""
    cores = str(os.cpu_count() or "?")
    with contextlib.suppress(AttributeError):
        usable = len(os.sched_getaffinity(0))
        if str(usable) != cores:
            cores += f" ({usable} usable)"
    return {
        "CPU": _cpu_model(),
        "Cores": cores,
        "Memory": _memory(),
        "Kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Server": f"{server.version()} ({server.transport})",
        "redis-py": redis.__version__,
        "asyncdrive": f"{asyncdrive.__version__} ({_git_revision()})",
        "Drive root": f"{_filesystem(root)} ({root.parent})",
        "Load average at start": load_average(),
    }


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages, to judge how quiet the machine was."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def command_line(argv: Sequence[str]) -> str:
    """Return the command that was run, as one would type it at the repository root."""
    python = sys.executable
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(python, REPO)
        if not relative.startswith(".."):
            python = relative
    return shlex.join([python, "-m", "bench", *argv])


class CpuMeter:
    """How much CPU other processes took while a benchmark ran (Linux; else nothing).

    The machine's busy time (``/proc/stat``) minus this process's, its reaped children's
    (the workers) and the server's. A figure well above zero means the measurements shared
    the CPUs with other work, and are slower than the machine can do.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._start: tuple[float, float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            tick = os.sysconf("SC_CLK_TCK")
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            busy = (user + nice + system + irq + softirq) / tick
            ours = sum(
                r.ru_utime + r.ru_stime
                for r in (resource.getrusage(resource.RUSAGE_SELF),
                          resource.getrusage(resource.RUSAGE_CHILDREN))
            )  # fmt: skip
            if self.server.proc is not None:
                stat = Path(f"/proc/{self.server.proc.pid}/stat").read_text()
                utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
                ours += (int(utime) + int(stime)) / tick
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy, ours, steal / tick

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> tuple[str, dict[str, float]]:
        """Return a sentence for the report and the figures (CPU cores, on average)."""
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return "", {}
        wall, busy, ours, steal = (b - a for a, b in zip(self._start, end, strict=True))
        others = max(0.0, (busy - ours) / wall)
        figures = {"other_processes_cpus": others, "steal_cpus": steal / wall}
        text = f"Other processes used {others:.2f} CPUs on average meanwhile"
        if steal / wall >= 0.005:
            text += f", and the hypervisor took {steal / wall:.2f}"
        return text + ".", figures


# -- reports ---------------------------------------------------------------------------------


@dataclass
class Report:
    """One invocation of the suite: when, how, where, and each benchmark's result."""

    date: str
    command: str
    quick: bool
    machine: dict[str, str]
    results: list[Result]

    @staticmethod
    def now() -> str:
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def to_json(self) -> str:
        return json.dumps(
            {
                "date": self.date,
                "command": self.command,
                "quick": self.quick,
                "machine": self.machine,
                "benchmarks": {r.name: asdict(r) for r in self.results},
            },
            indent=2,
            ensure_ascii=False,
        )

    def machine_line(self) -> str:
        m = self.machine
        return (
            f"{m['CPU']}, {m['Cores']} cores, {m['Memory']}, {m['Kernel']}, {m['Python']}, "
            f"{m['Server']}, root on {m['Drive root'].rsplit(' (', 1)[0]}"
        )

    def text(self, result: Result) -> str:
        parts = [f"== {result.title} ({result.name}, {result.seconds:.0f} s) =="]
        parts += [result.background] if result.background else []
        parts += [table.text() for table in result.tables]
        parts += ["\n".join(f"- {note}" for note in result.notes)] if result.notes else []
        parts += [f"chart: {path} ({caption})" for caption, path in result.charts]
        if result.targets:
            table = Table(["target", "measured", "goal", ""], title="Targets")
            for target in result.targets:
                table.add(target.what, target.measured, target.goal, target.verdict)
            parts.append(table.text())
        return "\n\n".join(parts) + "\n"

    def section(self, result: Result) -> str:
        """The markdown section of one benchmark, between markers so it can be replaced alone."""
        quick = " (--quick: smoke-run sizes, not figures to quote)" if self.quick else ""
        parts = [
            f"## {result.title}",
            f"_Measured {self.date} by `{self.command}`{quick}, in {result.seconds:.0f} s, on "
            f"{self.machine_line()}. {result.background}_",
            result.intro.strip(),
            *(table.markdown() for table in result.tables),
            *(f"![{caption}]({path})" for caption, path in result.charts),
        ]
        if result.notes:
            parts.append("\n".join(f"- {note}" for note in result.notes))
        body = "\n\n".join(parts)
        return f"<!-- bench:{result.name} -->\n{body}\n<!-- /bench:{result.name} -->"

    def markdown(self, benchmarks: Sequence[Benchmark], previous: str = "") -> str:
        """Render BENCHMARKS.md: this run's sections, and ``previous`` ones for the others.

        ``benchmarks`` gives the order of the sections. The summary of the targets at the
        top takes the rows of this run's benchmarks from their results, and those of the
        others from ``previous``, as their sections are.
        """
        kept = {
            m.group(1): m.group(0)
            for m in re.finditer(r"<!-- bench:(\w+) -->\n.*?<!-- /bench:\1 -->", previous, re.S)
        }
        fresh = {r.name: self.section(r) for r in self.results}
        sections = [fresh.get(b.name) or kept.get(b.name) for b in benchmarks]
        rows = [("Date", self.date), ("Command", f"`{self.command}`"), *self.machine.items()]
        header = "\n".join(
            [
                "# Benchmarks",
                "",
                "Written by the benchmark suite in `bench/`: run `.venv/bin/python -m bench` at "
                "the repository root to measure again and rewrite this file (`--only NAME` "
                "rewrites one section; `--quick` is a smoke run that leaves this file alone). "
                "The tests never assert speed; targets are shown as pass/miss next to the "
                "figures. Each section names the run that produced it, and how much CPU other "
                "processes took meanwhile: figures measured beside other work are slower than "
                "the machine can do.",
                "",
                "## Last run",
                "",
                "| | |",
                "|---|---|",
                *(f"| {key} | {value} |" for key, value in rows),
            ]
        )
        parts = [header, self.targets_summary(benchmarks, previous), *sections]
        return "\n\n".join(part for part in parts if part) + "\n"

    def targets_summary(self, benchmarks: Sequence[Benchmark], previous: str = "") -> str:
        """The table of every benchmark's targets, met or missed, and what limits a miss.

        One row a `Target`; a benchmark this run did not measure keeps its rows from
        ``previous`` (its first cell links to its section, by title). Empty if no row.
        """
        block = re.search(r"<!-- bench-targets -->\n.*?<!-- /bench-targets -->", previous, re.S)
        old_rows = block.group(0).splitlines() if block else []
        fresh = {r.name: r for r in self.results}
        rows: list[str] = []
        for bench in benchmarks:
            link = f"[{bench.title}](#{_anchor(bench.title)})"
            result = fresh.get(bench.name)
            if result is None:
                rows += [row for row in old_rows if row.startswith(f"| {link} |")]
                continue
            for target in result.targets:
                limit = "-" if target.met else target.limit or "-"
                cells = [link, target.what, target.measured, target.goal,
                         target.verdict_markdown, limit]  # fmt: skip
                rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if not rows:
            return ""
        met = sum("| **pass**" in row for row in rows)
        return "\n".join(
            [
                "<!-- bench-targets -->",
                "## Targets",
                "",
                f"The issue's targets as each section's last run measured them: {met} of "
                f"{len(rows)} met. Each ratio is the median of ratios taken within a run (the "
                "sections give min and max over the runs, and how each figure is measured); "
                "where a target is missed, the last column says what limits it, and the "
                "section's notes give the measurements behind that. How we got here, and what "
                "was tried and not kept: [bench/NOTES.md](bench/NOTES.md).",
                "",
                "| section | target | measured | goal | | what limits it |",
                "|---|---|---:|---:|---|---|",
                *rows,
                "",
                "<!-- /bench-targets -->",
            ]
        )


def _anchor(title: str) -> str:
    """Return the anchor GitHub gives a heading: ``"Against the original Drive"`` ->
    ``"against-the-original-drive"``."""
    kept = (ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return "".join(kept).replace(" ", "-")

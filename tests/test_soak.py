"""Load: a bounded soak of many processes doing a random mix of every operation at once.

Eight workers (half on `Drive`, half on `SyncDrive`) talk to a server on loopback TCP for a
bounded time. Each writes as its own component into its own folder, and into one folder
shared by all (``allow_duplicates=True``), so it can keep an exact model of its own copies:
its reads of them must agree with the model, and its reads of the others' files may only
fail because the file went away. A watcher process follows the change log all along.

The default run lasts about 10 s; ``ASYNCDRIVE_SOAK_SECONDS=60 pytest -m soak`` runs longer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncdrive import Drive, DriveFileNotFoundError, SyncDrive

from .servers import ServerProcess
from .test_concurrency import (
    END_COMPONENT,
    END_MARKER,
    change_log,
    check_disk,
    index_state,
    open_drive,
    release,
    replay,
    results,
    sha256,
    wait_until_go,
    workers,
    write_local,
)

SOAK_SECONDS = float(os.environ.get("ASYNCDRIVE_SOAK_SECONDS", "10"))
PROCESSES = 8
#: Bounds on each worker's loop, whatever the clock says.
MAX_OPS = int(SOAK_SECONDS * 2000)
#: Bounds a wait that only a failure would reach.
PATIENCE = 60.0

SHARED = "shared"
OWN_FILES = ["f0.bin", "f1.bin", "f2.bin", "f3.bin", "sub/g0.bin", "sub/g1.bin"]
SHARED_FILES = [f"{SHARED}/s{k}.bin" for k in range(4)]


def component(n: int) -> str:
    return f"w{n}"


def own_paths(n: int) -> list[str]:
    return [f"{component(n)}/{name}" for name in OWN_FILES]


# -- a server on loopback TCP -------------------------------------------------------------------


@pytest.fixture
def loopback_url(redis_url: str) -> Iterator[str]:
    """A server of this test's own on 127.0.0.1 (or the external server given, if any)."""
    if not redis_url.startswith("unix:"):
        yield redis_url
        return
    folder = Path(tempfile.mkdtemp(prefix="adsoak-"))
    server = ServerProcess(folder, tcp=True)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def soak_env(
    env: dict[str, str], loopback_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The test environment, on the loopback server (for this process and the workers)."""
    monkeypatch.setenv("ASYNCDRIVE_REDIS_URL", loopback_url)
    # However long the soak, the change log keeps every event, for the exact checks.
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", str(10**8))
    return dict(os.environ)


# -- a worker ---------------------------------------------------------------------------------


def content(owner: str, path: str, seq: int, rng: random.Random) -> bytes:
    """Bytes that say whose and which file they are, so any reader can check what it got."""
    payload = rng.randbytes(rng.randrange(4000))
    return f"{owner}|{path}|{seq}|{len(payload)}\n".encode() + payload


def check_content(data: bytes, owner: str, path: str) -> None:
    header, _, payload = data.partition(b"\n")
    who, where, _seq, size = header.decode().split("|")
    if (who, where, int(size)) != (owner, path, len(payload)):
        raise AssertionError(f"read {header!r} ({len(payload)} bytes) for {owner}'s {path!r}")


class Worker:
    """One soak process: a random mix of operations, each checked against an exact model."""

    def __init__(self, drive: Any, n: int, rng: random.Random) -> None:
        self.drive = drive
        self.n = n
        self.me = component(n)
        self.rng = rng
        self.mine = own_paths(n) + SHARED_FILES
        #: path -> (version, checksum) of each copy this component has.
        self.model: dict[str, tuple[int, str]] = {}
        self.last_version: dict[str, int] = {}
        #: Every change this component made, in order: (change, path, version, checksum).
        self.changes: list[tuple[str, str, int, str]] = []
        self.cursor = "0"  # of the watch over the own folder
        self.seen_in_folder = 0
        self.seq = 0
        self.ops: Counter[str] = Counter()
        self.expected_errors: Counter[str] = Counter()
        self.unexpected: list[str] = []

    def other(self) -> tuple[str, str]:
        """A (component, path) of another worker: in its folder, or its copy of a shared file."""
        m = self.rng.choice([m for m in range(PROCESSES) if m != self.n])
        path = self.rng.choice(own_paths(m) + SHARED_FILES)
        return component(m), path

    def committed(self, change: str, path: str, version: int, checksum: str) -> None:
        if version <= self.last_version.get(path, 0):
            raise AssertionError(f"{path}: version {version} after {self.last_version[path]}")
        self.last_version[path] = version
        self.model[path] = (version, checksum)
        self.changes.append((change, path, version, checksum))

    async def expect_missing(self, operation: Any) -> None:
        """Run ``operation`` on a copy this component does not have: it must be not found."""
        try:
            await operation
        except DriveFileNotFoundError:
            self.expected_errors["not found (own)"] += 1
        else:
            raise AssertionError("succeeded on a copy the model says does not exist")

    # -- the operations --------------------------------------------------------------------

    async def op_write(self) -> None:
        path = self.rng.choice(self.mine)
        self.seq += 1
        data = content(self.me, path, self.seq, self.rng)
        change = "modified" if path in self.model else "added"
        if self.rng.random() < 0.3:  # conditional: only this worker writes its copies
            current = self.model.get(path, (0, ""))[0]
            info = await self.drive.write_bytes(path, data, if_version=current)
        else:
            info = await self.drive.write_bytes(path, data)
        assert (info.checksum, info.size, info.component_name) == (sha256(data), len(data), self.me)
        self.committed(change, path, info.version, info.checksum)

    async def op_put(self) -> None:
        path = self.rng.choice(self.mine)
        self.seq += 1
        data = content(self.me, path, self.seq, self.rng)
        change = "modified" if path in self.model else "added"
        write_local(path, data)
        await self.drive.put(path)
        info = await self.drive.info(path, component_name=self.me)
        assert info.checksum == sha256(data)
        self.committed(change, path, info.version, info.checksum)

    async def op_delete(self) -> None:
        path = self.rng.choice(self.mine)
        if path not in self.model:
            await self.expect_missing(self.drive.delete(path))
            return
        await self.drive.delete(path)
        version, checksum = self.model.pop(path)
        self.changes.append(("deleted", path, version, checksum))

    async def op_read_own(self) -> None:
        path = self.rng.choice(self.mine)
        kind = self.rng.choice(["read_bytes", "info", "get", "exists"])
        if kind == "exists":
            assert await self.drive.exists(path, component_name=self.me) == (path in self.model)
            return
        if path not in self.model:
            method = getattr(self.drive, kind)
            await self.expect_missing(method(path, component_name=self.me))
            return
        version, checksum = self.model[path]
        if kind == "read_bytes":
            assert sha256(await self.drive.read_bytes(path, component_name=self.me)) == checksum
        elif kind == "info":
            info = await self.drive.info(path, component_name=self.me)
            assert (info.version, info.checksum) == (version, checksum)
        else:
            await self.drive.get(path, component_name=self.me, overwrite=True)
            assert sha256(Path(path).read_bytes()) == checksum

    async def op_read_other(self) -> None:
        owner, path = self.other()
        # Another worker's file may go away at any moment: not found is the one excuse.
        try:
            kind = self.rng.choice(["read_bytes", "info", "get"])
            if kind == "read_bytes":
                check_content(await self.drive.read_bytes(path, component_name=owner), owner, path)
            elif kind == "info":
                info = await self.drive.info(path, component_name=owner)
                assert (info.path, info.component_name) == (path, owner)
            else:
                # Files of another's folder have one owner: no need to name it.
                name = owner if path.startswith(SHARED) else None
                await self.drive.get(path, component_name=name, overwrite=True)
                check_content(Path(path).read_bytes(), owner, path)
        except DriveFileNotFoundError:
            self.expected_errors["not found (other)"] += 1

    async def op_list(self) -> None:
        folder = self.rng.choice([self.me, f"{self.me}/sub", SHARED, "."])
        mine = sorted(p for p in self.model if p.startswith(folder + "/") or folder == ".")
        listed = await self.drive.list(folder, recursive=True, component_name=self.me)
        assert listed == mine, (folder, listed, mine)
        everyone = await self.drive.list(folder, recursive=True)
        if folder.startswith(self.me):
            assert everyone == mine
        else:
            assert set(mine) <= set(everyone)
        children = await self.drive.list(self.me)
        expected = {p if p.count("/") == 1 else f"{self.me}/sub" for p in self.model}
        assert children == sorted(c for c in expected if c.startswith(self.me + "/"))

    async def op_watch(self) -> None:
        """Catch up on the changes of the own folder, which only this worker makes."""
        folder = [c for c in self.changes if c[1].startswith(self.me + "/")]
        pending = folder[self.seen_in_folder :]
        if not pending:
            return
        got = []
        async with self.drive.watch(self.me, since=self.cursor, timeout=PATIENCE) as events:
            async for event in events:
                got.append((event.change.value, event.path, event.version, event.checksum))
                if len(got) == len(pending):
                    break
            self.cursor = events.cursor
        assert got == pending
        self.seen_in_folder = len(folder)

    async def run(self, seconds: float) -> None:
        ops = [
            (self.op_write, 20),
            (self.op_put, 8),
            (self.op_delete, 12),
            (self.op_read_own, 22),
            (self.op_read_other, 18),
            (self.op_list, 10),
            (self.op_watch, 3),
        ]
        choose = [op for op, _ in ops], [weight for _, weight in ops]
        deadline = time.monotonic() + seconds
        for _ in range(MAX_OPS):
            if time.monotonic() >= deadline:
                break
            op = self.rng.choices(*choose)[0]
            self.ops[op.__name__] += 1
            try:
                await op()
            except Exception as exc:
                self.unexpected.append(f"{op.__name__}: {exc!r}")
                if len(self.unexpected) >= 20:
                    break
        try:  # a last catch-up on the own folder's changes
            await self.op_watch()
        except Exception as exc:
            self.unexpected.append(f"op_watch: {exc!r}")

    def report(self) -> dict[str, Any]:
        return {
            "component": self.me,
            "model": self.model,
            "changes": self.changes,
            "ops": self.ops,
            "expected_errors": self.expected_errors,
            "unexpected": self.unexpected,
        }


async def soak_worker(drive_id: str, n: int, seconds: float) -> None:
    face = "async" if n % 2 else "sync"
    drive = open_drive(drive_id, face, component_name=component(n), allow_duplicates=True)
    try:
        await drive.exists(".")
        await wait_until_go()
        worker = Worker(drive, n, random.Random(n))
        await worker.run(seconds)
        print(json.dumps(worker.report()))
    finally:
        await drive.aclose()


async def watcher(drive_id: str) -> None:
    """Follow the whole change log from before the workers start, up to the end marker.

    Events are kept in memory and printed at the end, so the watcher keeps up all along.
    """
    seen: list[tuple[str, list[Any]]] = []
    end = None
    async with Drive(drive_id) as drive:
        await drive.exists(".")
        async with drive.watch(timeout=PATIENCE) as events:
            await wait_until_go()
            async for event in events:
                if (event.component_name, event.path) == (END_COMPONENT, END_MARKER):
                    end = event.id
                    break
                change = [event.change.value, event.path, event.version, event.checksum]
                seen.append((event.component_name, change))
    print(json.dumps({"events": seen, "end": end}))


# -- the test ---------------------------------------------------------------------------------


def changes_of(reports: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    return {r["component"]: [tuple(c) for c in r["changes"]] for r in reports}


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS * 3 + 240)
def test_soak(soak_env: dict[str, str], root: Path, workdir: Path, drive_id: str) -> None:
    argvs = [["worker", drive_id, str(n), str(SOAK_SECONDS)] for n in range(PROCESSES)]
    follow = [["watcher", drive_id]]
    with (
        workers(__name__, follow, env=soak_env, cwd=workdir, prefix="watcher") as watcher_proc,
        workers(__name__, argvs, env=soak_env, cwd=workdir) as procs,
    ):
        release(watcher_proc)
        release(procs)
        reports = [log[0] for log in results(procs, timeout=SOAK_SECONDS + 240)]
        summary = {
            r["component"]: {"ops": sum(r["ops"].values()), **r["expected_errors"]} for r in reports
        }
        print("soak:", json.dumps(summary))
        assert [r["unexpected"] for r in reports] == [[]] * PROCESSES
        with SyncDrive(drive_id) as drive:
            log = change_log(drive)  # writes the end marker, which ends the watcher too
            watched = results(watcher_proc, timeout=PATIENCE)[0][0]
            components = [r["component"] for r in reports]
            state = index_state(drive, [*components, END_COMPONENT])
            check_disk(drive, root, state)
            # Each worker's model is its component's part of the drive.
            for report in reports:
                me = report["component"]
                model = {path: tuple(v) for path, v in report["model"].items()}
                assert drive.list(".", recursive=True, component_name=me) == sorted(model)
                for path, (version, checksum) in model.items():
                    assert sha256(drive.read_bytes(path, component_name=me)) == checksum
                    assert drive.info(path, component_name=me).version == version

    # The final state is the union of the models, and what the change log leads to.
    final = {k: (v.version, v.checksum) for k, v in state.items() if k[0] != END_COMPONENT}
    assert final == {
        (r["component"], path): tuple(v) for r in reports for path, v in r["model"].items()
    }
    assert replay(log) == final
    # The log, and the watcher that followed it live, hold exactly each worker's changes, in
    # the worker's order.
    expected = changes_of(reports)
    logged: dict[str, list[tuple[Any, ...]]] = {c: [] for c in expected}
    for e in log:
        logged[e.component_name].append((e.change.value, e.path, e.version, e.checksum))
    assert logged == expected
    assert watched["end"] is not None, "the watcher never saw the end marker"
    live: dict[str, list[tuple[Any, ...]]] = {c: [] for c in expected}
    for owner, change in watched["events"]:
        live[owner].append(tuple(change))
    assert live == expected
    assert len(watched["events"]) == len(log) == sum(len(c) for c in expected.values())
    assert len(log) > 0


def main(argv: list[str]) -> None:
    role, drive_id, *args = argv
    if role == "worker":
        n, seconds = args
        anyio.run(soak_worker, drive_id, int(n), float(seconds))
    elif role == "watcher":
        anyio.run(watcher, drive_id)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

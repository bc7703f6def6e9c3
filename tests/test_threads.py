"""The disk worker threads: results, errors, context, bounds, cancellation, shutdown, exit."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncdrive import _threads
from asyncdrive._tasks import to_its_end
from asyncdrive._threads import (
    THREAD_NAME,
    DiskThreads,
    NoThreads,
    StopRequest,
    raise_if_requested,
    stop_request,
)

from .conftest import run_python

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


@pytest.fixture
def threads() -> Iterator[DiskThreads]:
    pool = DiskThreads(4)
    yield pool
    pool.shutdown(wait=True)


def running_threads(pool: DiskThreads) -> list[threading.Thread]:
    return [t for t in pool._threads if t.is_alive()]


async def test_a_call_returns_its_result_in_another_thread(threads: DiskThreads) -> None:
    here = threading.get_ident()
    ident, name = await threads.run(lambda: (threading.get_ident(), threading.current_thread()))
    assert ident != here
    assert name.name.startswith(f"{THREAD_NAME}_")


async def test_a_call_raises_its_own_error_with_its_traceback(threads: DiskThreads) -> None:
    def missing() -> bytes:
        return Path("no-such-file").read_bytes()

    with pytest.raises(FileNotFoundError) as caught:
        await threads.run(missing)
    assert "missing" in [entry.name for entry in caught.traceback]


async def test_a_call_sees_the_callers_context_variables(threads: DiskThreads) -> None:
    request_id.set("r-42")
    assert await threads.run(request_id.get) == "r-42"


async def test_threads_start_on_demand_up_to_the_bound(threads: DiskThreads) -> None:
    for _ in range(5):  # one at a time: one thread does them all
        await threads.run(os.getpid)
    assert len(threads._threads) == 1

    inside = 0
    busiest = 0
    lock = threading.Lock()
    release = threading.Event()

    def hold() -> None:
        nonlocal inside, busiest
        with lock:
            inside += 1
            busiest = max(busiest, inside)
            if inside == threads.max_threads:
                release.set()
        release.wait(10)
        with lock:
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(3 * threads.max_threads):
            tg.start_soon(threads.run, hold)
    assert busiest == threads.max_threads
    assert len(threads._threads) == threads.max_threads


async def test_outcomes_that_arrive_together_wake_the_loop_once(
    threads: DiskThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    wakes = 0
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(*args: Any) -> asyncio.Handle:
        nonlocal wakes
        wakes += 1
        return call_soon_threadsafe(*args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    go = threading.Event()
    calls = [asyncio.ensure_future(threads.run(lambda i=i: go.wait(10) and i)) for i in range(4)]
    await asyncio.sleep(0)  # the calls are handed to the threads
    go.set()
    # The loop is held here until every call has finished: their outcomes wait together.
    inbox = _threads._inbox(loop)
    for _ in range(1000):
        if len(inbox.outcomes) == 4:
            break
        time.sleep(0.01)
    assert await asyncio.gather(*calls) == [0, 1, 2, 3]
    assert wakes == 1
    assert await threads.run(os.getpid) == os.getpid() and wakes == 2  # one alone: one


def test_an_outcome_for_a_closed_loop_is_dropped(
    threads: DiskThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.new_event_loop()
    started, go, added = threading.Event(), threading.Event(), threading.Event()
    add = _threads._Inbox.add

    def add_then_tell(inbox: _threads._Inbox, *args: Any) -> None:
        add(inbox, *args)
        added.set()

    monkeypatch.setattr(_threads._Inbox, "add", add_then_tell)

    def slow() -> str:
        started.set()
        go.wait(10)
        return "late"

    call = loop.create_task(threads.run(slow))
    loop.run_until_complete(asyncio.to_thread(started.wait, 10))
    loop.run_until_complete(loop.shutdown_default_executor())
    call._log_destroy_pending = False  # type: ignore[attr-defined]  # left pending on purpose
    loop.close()
    go.set()
    # The thread finds the loop closed: the outcome is dropped, and the thread goes on.
    assert added.wait(10)
    inbox = _threads._inbox(loop)
    assert inbox.outcomes == [] and not inbox.wake_pending
    assert asyncio.run(threads.run(lambda: "next")) == "next"


@pytest.mark.parametrize("how", ["task.cancel", "anyio scope"])
async def test_a_cancelled_caller_waits_for_its_call_to_finish(
    threads: DiskThreads, tmp_path: Path, how: str
) -> None:
    started, proceed = threading.Event(), threading.Event()
    done = tmp_path / "done"

    def slow_write() -> str:
        started.set()
        proceed.wait(10)
        done.write_text("finished")
        return "result"

    outcome: list[str] = []

    async def caller() -> None:
        try:
            if how == "anyio scope":
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await threads.run(slow_write)
                outcome.append("scope exited")
            else:
                await threads.run(slow_write)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            outcome.append(f"call finished: {done.exists()}")

    scopes: list[anyio.CancelScope] = []
    task = asyncio.create_task(caller())
    await asyncio.to_thread(started.wait, 10)
    if how == "anyio scope":
        scopes[0].cancel()  # re-delivered on every loop turn until the task leaves the scope
    else:
        task.cancel()
    for _ in range(20):  # the loop keeps turning: the caller stays in its wait
        await asyncio.sleep(0)
    assert not task.done()
    assert outcome == []
    proceed.set()
    if how == "anyio scope":
        await task
        assert outcome == ["scope exited", "call finished: True"]
    else:
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outcome == ["cancelled", "call finished: True"]


async def test_a_cancelled_call_that_waits_for_a_thread_is_not_made() -> None:
    pool = DiskThreads(1)
    started, proceed = threading.Event(), threading.Event()
    made: list[str] = []

    def hold() -> None:
        started.set()
        proceed.wait(10)
        made.append("hold")

    try:
        first = asyncio.create_task(pool.run(hold))
        await asyncio.to_thread(started.wait, 10)
        queued = asyncio.create_task(pool.run(made.append, "queued"))
        while pool._queue.qsize() == 0:  # until it is handed over, behind the first
            await asyncio.sleep(0)
        queued.cancel()
        await asyncio.sleep(0)
        proceed.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert made == ["hold"]
        await pool.run(made.append, "after")  # the thread goes on with the next
        assert made == ["hold", "after"]
    finally:
        pool.shutdown(wait=True)


async def test_shutdown_ends_the_threads_and_refuses_new_calls() -> None:
    pool = DiskThreads(2)
    assert await pool.run(lambda: 7) == 7
    assert "open" in repr(pool)
    workers = list(pool._threads)
    pool.shutdown(wait=True)
    assert [t for t in workers if t.is_alive()] == []
    assert "closed" in repr(pool)
    with pytest.raises(NoThreads, match="shut down"):
        await pool.run(lambda: 7)


def test_an_unclosed_pool_lets_the_interpreter_exit_after_its_calls(tmp_path: Path) -> None:
    # Idle threads do not hold the exit, and a call in flight when the program ends
    # finishes its disk work first (the threads are joined at exit).
    code = f"""
import asyncio, threading, time
from pathlib import Path
from asyncdrive._threads import DiskThreads

pool, idle = DiskThreads(4), DiskThreads(4)
started = threading.Event()

def slow_write():
    started.set()
    time.sleep(0.3)
    Path({str(tmp_path / "written")!r}).write_text("all of it")

async def main():
    await idle.run(int)  # a thread that stays idle
    await pool.run(slow_write)

# The caller's loop runs in a daemon thread, which the exit does not wait for.
threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
started.wait(10)
print("exiting", flush=True)
"""
    proc = run_python(code, cwd=tmp_path, env=dict(os.environ))
    assert proc.stdout.strip() == "exiting"
    assert (tmp_path / "written").read_text() == "all of it"


# -- calls shared by concurrent callers (CallBatcher) -------------------------------------


class Handler:
    """A batch handler that records each call's items, and holds its first ``hold`` calls
    until told (``go[n]``); ``started[n]`` is set when call ``n`` begins."""

    def __init__(self, hold: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.started = [threading.Event() for _ in range(hold)]
        self.go = [threading.Event() for _ in range(hold)]
        self.first_started, self.first_go = self.started[0], self.go[0]

    def __call__(self, items: list[str]) -> list[str | BaseException]:
        number = len(self.calls)
        self.calls.append(list(items))
        if number < len(self.go):
            self.started[number].set()
            self.go[number].wait(10)
        if "fail the call" in items:
            raise OSError("the whole call failed")
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


def batcher(
    threads: DiskThreads, handler: Handler, max_items: int = 64, max_weight: int = 1000
) -> _threads.CallBatcher[str, str]:
    return _threads.CallBatcher(threads.run, handler, max_items=max_items, max_weight=max_weight)


async def while_first_call_holds(handler: Handler, tasks: list[asyncio.Task[Any]]) -> None:
    """Let the tasks submit while the first call is held, then let it go."""
    await asyncio.to_thread(handler.first_started.wait, 10)
    for _ in range(5):
        await asyncio.sleep(0)  # every task has submitted and waits
    handler.first_go.set()


async def test_an_item_alone_is_handled_at_once_in_a_call_of_its_own(
    threads: DiskThreads,
) -> None:
    handler = Handler()
    handler.first_go.set()
    copies = batcher(threads, handler)
    assert await copies.submit("a") == "A"
    assert await copies.submit("b") == "B"
    assert handler.calls == [["a"], ["b"]]
    assert repr(copies) == "<CallBatcher idle, 0 waiting>"


async def test_items_submitted_during_a_call_go_together_in_the_next(
    threads: DiskThreads,
) -> None:
    handler = Handler()
    copies = batcher(threads, handler, max_items=4, max_weight=100)
    first = asyncio.ensure_future(copies.submit("first"))
    await asyncio.to_thread(handler.first_started.wait, 10)
    # Ten more wait: in calls of at most 4 items and 100 of weight, in order.
    weights = [10, 10, 10, 10, 10, 60, 50, 10, 10, 10]
    rest = [asyncio.ensure_future(copies.submit(f"i{n}", w)) for n, w in enumerate(weights)]
    await while_first_call_holds(handler, rest)
    assert await first == "FIRST"
    assert await asyncio.gather(*rest) == [f"I{n}" for n in range(10)]
    assert handler.calls == [
        ["first"],
        ["i0", "i1", "i2", "i3"],
        ["i4", "i5"],
        ["i6", "i7", "i8", "i9"],
    ]
    assert repr(copies) == "<CallBatcher idle, 0 waiting>"


async def test_an_items_error_goes_to_its_caller_and_a_calls_to_all_of_its_items(
    threads: DiskThreads,
) -> None:
    handler = Handler()
    copies = batcher(threads, handler, max_items=3)
    first = asyncio.ensure_future(copies.submit("bad first"))
    await asyncio.to_thread(handler.first_started.wait, 10)
    names = ["ok", "bad one", "ok too", "fail the call", "with it", "too", "next"]
    rest = [asyncio.ensure_future(copies.submit(name)) for name in names]
    await while_first_call_holds(handler, rest)
    with pytest.raises(ValueError, match="bad first"):
        await first
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert handler.calls[1:] == [names[:3], names[3:6], names[6:]]
    assert outcomes[0] == "OK" and outcomes[2] == "OK TOO" and outcomes[6] == "NEXT"
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad one"
    assert [str(o) for o in outcomes[3:6]] == ["the whole call failed"] * 3
    # One exception each (the same error): raised by each caller, their tracebacks apart.
    assert all(isinstance(o, OSError) for o in outcomes[3:6])
    assert len({id(o) for o in outcomes[3:6]}) == 3
    assert outcomes[4].__cause__ is outcomes[3] and outcomes[5].__cause__ is outcomes[3]  # type: ignore[union-attr]


async def test_a_caller_cancelled_while_waiting_is_skipped_and_in_a_call_waits_for_it(
    threads: DiskThreads,
) -> None:
    handler = Handler()
    copies = batcher(threads, handler)
    first = asyncio.ensure_future(copies.submit("first"))
    await asyncio.to_thread(handler.first_started.wait, 10)
    skipped = asyncio.ensure_future(copies.submit("skipped"))
    kept = asyncio.ensure_future(copies.submit("kept"))
    await asyncio.sleep(0)
    skipped.cancel()  # before its call: never handled
    first.cancel()  # in a call under way: waits for it
    for _ in range(20):
        await asyncio.sleep(0)
    assert not first.done()
    handler.first_go.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(asyncio.CancelledError):
        await skipped
    assert await kept == "KEPT"
    assert handler.calls == [["first"], ["kept"]]


async def test_a_caller_cancelled_in_a_call_under_way_is_cancelled_once_it_ends(
    threads: DiskThreads,
) -> None:
    handler = Handler(hold=2)
    copies = batcher(threads, handler)
    first = asyncio.ensure_future(copies.submit("first"))
    await asyncio.to_thread(handler.started[0].wait, 10)
    second = asyncio.ensure_future(copies.submit("bad second"))  # its call will fail it
    await asyncio.sleep(0)
    handler.go[0].set()  # the first call ends; the next takes the second item
    await asyncio.to_thread(handler.started[1].wait, 10)
    second.cancel()
    for _ in range(20):
        await asyncio.sleep(0)
    assert not second.done()  # waits for its call
    handler.go[1].set()
    with pytest.raises(asyncio.CancelledError):  # not its item's ValueError
        await second
    assert await first == "FIRST"
    assert handler.calls == [["first"], ["bad second"]]


# -- calls made in the event loop's thread (QuickCalls) -------------------------------------


def test_quick_calls_need_a_local_folder_and_pause_when_slow(tmp_path: Path) -> None:
    looked_at: list[str] = []

    def is_local(folder: str) -> bool:
        looked_at.append(folder)
        return not folder.endswith("remote")

    quick = _threads.QuickCalls(is_local, slow=0.01, strikes=3, window=60.0, pause=0.2)
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    assert quick.folder_of(tmp_path / "local" / "a.txt") == local
    assert quick.folder_of("a.txt") == os.getcwd()  # relative: from the working folder
    assert not quick.allows(local)  # not looked at yet
    for _ in range(2):
        quick.learn(local)
        quick.learn(remote)
    assert looked_at == [local, remote]  # once each
    assert quick.allows(local) and not quick.allows(remote)
    assert quick.allows()  # no folder: only whether calls stay quick
    assert repr(quick) == "<QuickCalls 2 folders>"

    assert quick.run(lambda a, b: a + b, 1, 2) == 3  # quick: still allowed
    assert quick.allows(local)

    def slow_and_failing() -> None:
        time.sleep(0.02)
        raise ZeroDivisionError

    for _ in range(2):  # a slow call or two: no pause
        with pytest.raises(ZeroDivisionError):  # an error is timed too
            quick.run(slow_and_failing)
        assert quick.allows(local)
    with pytest.raises(ZeroDivisionError):  # the third within the window
        quick.run(slow_and_failing)
    assert not quick.allows(local) and not quick.allows()  # paused
    assert repr(quick) == "<QuickCalls 2 folders (paused)>"
    time.sleep(0.25)
    assert quick.allows(local)  # the pause is over
    quick.run(time.sleep, 0.02)  # the strikes start again after a pause
    assert quick.allows(local)

    # Slow calls further apart than the window do not add up.
    spread_out = _threads.QuickCalls(is_local, slow=0.01, strikes=2, window=0.2, pause=10.0)
    for _ in range(3):
        time.sleep(0.25)
        spread_out.run(time.sleep, 0.02)
    assert spread_out.allows()
    spread_out.run(time.sleep, 0.02)  # two within 0.2 s
    assert not spread_out.allows()

    # Calls slow without waiting (the thread busy, or given no CPU) do not count.
    def busy(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    busy_calls = _threads.QuickCalls(is_local, slow=0.01, strikes=2, window=60.0, pause=10.0)
    for seconds in (0.02, 0.02, 0.15):  # two strikes, and one ten times slower
        busy_calls.run(busy, seconds)
    assert busy_calls.allows()
    busy_calls.run(time.sleep, 0.02)
    busy_calls.run(time.sleep, 0.02)  # these waited
    assert not busy_calls.allows()

    # One call ten times slower than `slow` pauses at once.
    very_slow = _threads.QuickCalls(is_local, slow=0.01, strikes=3, window=60.0, pause=10.0)
    very_slow.run(time.sleep, 0.02)  # slow, not ten times
    assert very_slow.allows()
    very_slow.run(time.sleep, 0.15)
    assert not very_slow.allows()

    for number in range(quick.MAX_FOLDERS - 2):  # up to the bound
        quick.learn(f"{local}{number}")
    assert quick.allows(local) and repr(quick) == f"<QuickCalls {quick.MAX_FOLDERS} folders>"
    quick.learn("one more")  # past it: all forgotten
    assert not quick.allows(local) and repr(quick) == "<QuickCalls 1 folders>"


async def test_a_cancelled_caller_asks_its_call_to_stop_and_a_callers_caller_too(
    threads: DiskThreads,
) -> None:
    """A call sees a stop request of its own, made when its caller is cancelled, whose
    parent is the caller's own (a `SyncDrive` call's, requested by Ctrl-C or a close)."""
    started, stop_seen = threading.Event(), threading.Event()

    def steps() -> None:
        started.set()
        while True:
            raise_if_requested()
            stop_seen.wait(0.01)

    task = asyncio.create_task(threads.run(steps))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)

    outer = StopRequest()
    outer_token = stop_request.set(outer)
    try:
        started.clear()
        task = asyncio.create_task(threads.run(steps))
        await asyncio.to_thread(started.wait, 10)
        outer.request()  # the caller's caller's request; this task is not cancelled
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert repr(outer) == "<StopRequest requested>"
        assert await threads.run(lambda: stop_request.get() is not outer)  # one a call
    finally:
        stop_request.reset(outer_token)
    assert await threads.run(stop_request.get) is not None
    await threads.run(raise_if_requested)  # a new call: not requested


async def test_work_that_must_finish_sees_no_stop_request_of_its_caller(
    threads: DiskThreads,
) -> None:
    """`to_its_end` work (an install and its commit) ran in its caller's context: a
    SyncDrive call's stop request, requested by Ctrl-C or a close, stopped its disk steps
    too, and files a folder put had installed were left uncommitted."""
    outer = StopRequest()
    outer.request()
    token = stop_request.set(outer)
    try:
        with pytest.raises(asyncio.CancelledError):
            await threads.run(raise_if_requested)  # (the caller's own steps stop)
        await to_its_end(threads.run(raise_if_requested))  # (these run to their end)
        assert stop_request.get() is outer
    finally:
        stop_request.reset(token)


async def test_a_result_dropped_by_a_caller_cancelled_twice_is_released_once() -> None:
    """The release of what a cancelled caller dropped was itself handed to a thread, where
    it waited behind other calls: a second cancellation then (asyncio.run's end, a task
    group) skipped it, and the file the call opened stayed open."""
    pool = DiskThreads(1)
    started, proceed, other_done = threading.Event(), threading.Event(), threading.Event()
    released: list[int] = []

    def opener() -> int:
        started.set()
        proceed.wait(10)
        return os.open(os.devnull, os.O_RDONLY)

    def release(fd: int) -> None:
        released.append(fd)
        os.close(fd)

    try:
        task = asyncio.create_task(pool.run(opener, dropped=release))
        await asyncio.to_thread(started.wait, 10)
        other = asyncio.create_task(pool.run(other_done.wait, 10))  # next in the one thread
        await asyncio.sleep(0.01)
        task.cancel()
        proceed.set()
        await asyncio.sleep(0.1)  # (the opener's result dropped; the thread is the other's)
        task.cancel()  # again
        other_done.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await other
        assert len(released) == 1
        with pytest.raises(OSError):
            os.fstat(released[0])  # closed
    finally:
        proceed.set()
        other_done.set()
        pool.shutdown(wait=True)

"""React when files land: a trainer writes checkpoints, two evaluators share them.

Three kinds of process use one drive:

- a *trainer* puts checkpoints ``ckpt/0.pt``, ``ckpt/1.pt``, ...;
- two *evaluators* watch the drive in the consumer group ``"evaluators"``: each checkpoint
  goes to exactly one of them (a drive as a work queue of new files);
- the main process watches everything, like a logger, and prints each event.

Run it with no configuration (the embedded server is started for you)::

    python examples/watch_new_files.py
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.synchronize import Event

from asyncdrive import SyncDrive

DRIVE = "lit://checkpoints"
CHECKPOINTS = 6


def trainer(drive: SyncDrive) -> None:
    """Write the checkpoints, as a training loop would."""
    os.environ["ASYNCDRIVE_COMPONENT"] = "trainer"
    with drive:
        for step in range(CHECKPOINTS):
            drive.write_bytes(f"ckpt/{step}.pt", f"weights after step {step}".encode())


def evaluator(
    drive: SyncDrive, name: str, ready: Event, stop: Event, results: multiprocessing.Queue[str]
) -> None:
    """Evaluate each checkpoint this member of the group is handed, until told to stop."""
    with drive, drive.watch("ckpt", group="evaluators") as checkpoints:
        ready.set()  # the watch's starting point is fixed: nothing written from now is missed
        while not stop.is_set():
            event = checkpoints.next(timeout=0.2)  # None: nothing new meanwhile
            if event is not None and event.change == "added":
                weights = drive.read_bytes(event.path)
                results.put(f"{event.path} evaluated by {name} ({len(weights)} bytes)")


def main() -> None:
    """Run the trainer, two evaluators and a logger, and check the work was shared."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[str] = context.Queue()
    with SyncDrive(DRIVE, component_name="trainer") as previous_run:  # a clean slate:
        if previous_run.exists("ckpt"):
            previous_run.delete("ckpt", recursive=True)  # an earlier run's checkpoints,
        previous_run.remove_group("evaluators", force=True)  # and its group's place in them
    drive = SyncDrive(DRIVE)  # passed to the workers, which pickle it as its arguments
    log = drive.watch("ckpt")
    stop = context.Event()
    evaluators = []
    for name in ("evaluator-1", "evaluator-2"):
        ready = context.Event()
        proc = context.Process(target=evaluator, args=(drive, name, ready, stop, results))
        proc.start()
        ready.wait(timeout=60)
        evaluators.append(proc)
    writer = context.Process(target=trainer, args=(drive,))
    writer.start()

    with drive, log:
        for _ in range(CHECKPOINTS):
            event = log.next(timeout=60)
            assert event is not None, "no event within 60 s"
            print(f"logger: {event.change} {event.path} by {event.component_name}")
    writer.join()
    evaluated = sorted(results.get(timeout=60) for _ in range(CHECKPOINTS))
    stop.set()
    for proc in evaluators:
        proc.join()
    for line in evaluated:
        print(line)
    paths = sorted(line.split()[0] for line in evaluated)
    once = paths == sorted(f"ckpt/{step}.pt" for step in range(CHECKPOINTS))
    print(f"every checkpoint evaluated exactly once: {once}")
    sys.exit(0 if once and all(p.exitcode == 0 for p in [writer, *evaluators]) else 1)


if __name__ == "__main__":
    main()

"""Change events: what `Drive.watch` yields, one per successful put or delete."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum

__all__ = ["Change", "DriveEvent"]


class Change(StrEnum):
    """What happened to a path."""

    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class DriveEvent:
    """One change of a drive, as recorded in its change log.

    Example:
        >>> async for event in drive.watch("ckpt"):
        ...     print(event.change, event.path, event.version)
        added ckpt/3.pt 1

    Attributes:
        id: the event's position in the drive's log: pass it as ``watch(since=...)`` to
            resume right after this event.
        change: `Change.ADDED`, `Change.MODIFIED` or `Change.DELETED`.
        drive: the drive's name, e.g. ``"drive_1"``.
        path: the file's drive path.
        component_name: the component whose copy changed.
        size: the size in bytes (of the deleted version, for a delete).
        version: the new version (the deleted one, for a delete).
        checksum: the SHA-256 hex digest (of the deleted version, for a delete).
        timestamp: when the change was committed, in seconds since the epoch (server clock).
        deliveries: in a consumer group, how many times the group has handed this event to
            a member, this time included, as the server counts: 1 the first time, more once
            it came back (its member died, was restarted under its name, or took longer than
            ``claim_idle``; or a hand-out never reached its member: cut short by a timeout
            or a cancellation, or dropped unread by a watch closed). Set aside one that
            keeps coming back (it may crash its member). 1 outside groups. Not compared:
            the event handed out again equals the event.

    """

    id: str
    change: Change
    drive: str
    path: str
    component_name: str
    size: int
    version: int
    checksum: str
    timestamp: float
    deliveries: int = field(default=1, compare=False)

    def __setstate__(self, state: Sequence[object]) -> None:
        # A pickle of asyncdrive 0.1.0 before `deliveries` has one value less: the default.
        names = [f.name for f in fields(self)]
        values = [*state, 1][: len(names)]
        for name, value in zip(names, values, strict=True):
            object.__setattr__(self, name, value)


def event_from_fields(
    drive: str, event_id: str, fields: dict[str, str], deliveries: int = 1
) -> DriveEvent:
    """Build a `DriveEvent` from a change-log entry (handed out ``deliveries`` times)."""
    return DriveEvent(
        id=event_id,
        change=Change(fields["change"]),
        drive=drive,
        path=fields["path"],
        component_name=fields["component"],
        size=int(fields["size"]),
        version=int(fields["version"]),
        checksum=fields["checksum"],
        timestamp=int(fields["timestamp"]) / 1_000_000,
        deliveries=deliveries,
    )


#: A stream id as Redis takes it: ``<ms>`` or ``<ms>-<seq>``, ASCII digits, each under 2**64.
_EVENT_ID = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_MAX_ID_PART = 2**64 - 1


def parse_id(event_id: str) -> tuple[int, int]:
    """Split a stream id ``"<ms>-<seq>"`` into comparable integers.

    Example:
        >>> parse_id("1700000000000-3") < parse_id("1700000000001-0")
        True

    """
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        raise ValueError(f"not an event id: {event_id!r}")
    ms, seq = int(match[1]), int(match[2] or 0)
    if ms > _MAX_ID_PART or seq > _MAX_ID_PART:
        raise ValueError(f"not an event id (a part is over 64 bits): {event_id!r}")
    return ms, seq


#: This machine's clock that setting its time moves neither forward nor back (NTP steps, a
#: VM's resume, `date -s`) and that runs on while it sleeps: CLOCK_BOOTTIME on Linux;
#: elsewhere CLOCK_MONOTONIC (which macOS keeps running during sleep).
_STEADY_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def steady_now() -> float:
    """Return the seconds of this machine's steady clock (see `_STEADY_CLOCK`).

    What the server's time is carried by, from a measure of it (`_Connection.server_ms`):
    event ids are the server's time in ms.
    """
    return time.clock_gettime(_STEADY_CLOCK)

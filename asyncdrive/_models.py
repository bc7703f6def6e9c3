"""Value objects returned by drives."""

from __future__ import annotations

import sys
from dataclasses import dataclass

# What write_bytes and a writer take: any bytes-like object (PEP 688). Defined at run time
# too, for what reads annotations then (typing.get_type_hints: pydantic, typer, sphinx).
if sys.version_info >= (3, 12):
    from collections.abc import Buffer as Buffer
else:
    from typing_extensions import Buffer as Buffer

__all__ = ["FileInfo", "FolderInfo", "GcReport", "GroupInfo"]

#: The checksum algorithm of `FileInfo.checksum` (hex digest). SHA-256 was measured to be the
#: fastest strong hash here (hardware-accelerated in OpenSSL), faster than BLAKE2b.
CHECKSUM_ALGORITHM = "sha256"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the drive knows of one file, as returned by `Drive.info`.

    Example:
        >>> info = await drive.info("a.txt")
        >>> info.size, info.version, info.component_name
        (13, 1, 'default')

    Attributes:
        path: the drive path, e.g. ``"ckpt/3.pt"``.
        size: the size in bytes.
        mtime: when this version was committed, in seconds since the epoch.
        checksum: the SHA-256 hex digest of the bytes.
        version: increases by at least one every time the component replaces the path.
        component_name: the component that owns this copy.

    """

    path: str
    size: int
    mtime: float
    checksum: str
    version: int
    component_name: str


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """A folder of a drive, as `Drive.list_info` returns it beside the `FileInfo` of files.

    A folder exists while it holds a file: it has no size, version or owner of its own.

    Example:
        >>> [e.path for e in await drive.list_info(".") if isinstance(e, FolderInfo)]
        ['ckpt']

    Attributes:
        path: the drive path, e.g. ``"ckpt"``.

    """

    path: str


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A consumer group of a drive (``watch(group=...)``), as `Drive.groups` returns it.

    Example:
        >>> [(g.name, g.path, g.members, g.lag) for g in await drive.groups()]
        [('evaluators', 'ckpt', 2, 0)]

    Attributes:
        name: the group's name.
        path: the folder (or file) its members watch; ``"."``: the whole drive.
        recursive: whether they watch its sub-folders too.
        members: its members: watches open in it, and members gone without leaving
            (killed): until what they held is handled and they have been idle 10 minutes,
            when the next member to leave the group removes them.
        pending: events handed to members and not yet acknowledged.
        last_event_id: the id of the last event handed to the group: its position.
        lag: events of the drive committed after that position (the members skip those
            outside their path); None where the server cannot count them (Redis before 7,
            or events deleted from the log by hand).
        idle: seconds since a member last read (the most recent); None: no members. A
            waiting member reads at least every 5 s.

    """

    name: str
    path: str
    recursive: bool
    members: int
    pending: int
    last_event_id: str
    lag: int | None
    idle: float | None


@dataclass(frozen=True, slots=True)
class GcReport:
    """What `Drive.gc` cleaned up.

    Attributes:
        uploads_removed: temporary uploads left by writers that died.
        installs_undone: replacements a writer installed but died before committing, undone.
        installs_kept: replacements that were committed, whose backups were removed.
        orphans_removed: bytes on disk with no index entry (a delete or put cut short).
        entries_removed: index entries whose bytes were gone from the disk.
        folders_removed: empty folders (a writer that died after making a file's folder).

    """

    uploads_removed: int = 0
    installs_undone: int = 0
    installs_kept: int = 0
    orphans_removed: int = 0
    entries_removed: int = 0
    folders_removed: int = 0

    def __str__(self) -> str:
        """Say what was done: ``"2 uploads removed, 0 installs undone, ..."``."""
        return ", ".join(
            f"{getattr(self, name)} {name.replace('_', ' ')}" for name in self.__slots__
        )

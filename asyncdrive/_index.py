"""The Redis index of a drive: key names, Lua scripts and the queries built on them.

Every key of a drive carries the hash tag ``{<drive name>}``, so a drive lives in one Redis
Cluster slot and every multi-key update is one atomic Lua call with all its keys in KEYS.

Keys (``P`` a drive path, ``D`` a folder, ``""`` the root, ``C`` a component)::

    asyncdrive:{name}:e:P        HASH  C -> "size|mtime|checksum|version"   who owns file P
    asyncdrive:{name}:d:D        HASH  child name -> count of files below   folder D, all owners
    asyncdrive:{name}:cd:C:D     HASH  the same, for component C only
    asyncdrive:{name}:files      ZSET  every file path (score 0, ordered by name)
    asyncdrive:{name}:cf:C       ZSET  every file path owned by C
    asyncdrive:{name}:versions   HASH  "C:P" -> last version (kept after delete: never reused)
    asyncdrive:{name}:events     STREAM  change log: change, path, component, size, ...
    asyncdrive:{name}:wake       pub/sub channel, the id of every new event
    asyncdrive:{name}:lock:C:P   STRING  short lock held while C commits P

Listing a folder reads one HASH; a recursive listing reads one ZSET range: both cost what the
answer costs, not what the drive holds.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis

from ._models import FileInfo
from ._paths import parent_dirs

#: How many events the change log keeps (approximately; trimmed with ``MAXLEN ~``).
DEFAULT_EVENTS_MAXLEN = 100_000

_PUT_LUA = """
-- KEYS: 1 entry, 2 versions, 3 files, 4 component files, 5 events, 6 children of the path,
--       then n folder children keys, n component folder children keys, n-1 ancestor entries.
-- ARGV: 1 component, 2 path, 3 mode (check|commit), 4 allow duplicates (0|1),
--       5 expected version, 6 size, 7 mtime, 8 checksum, 9 events maxlen, 10 wake channel,
--       11 n, then n child names (one per folder level).
local c, path, mode = ARGV[1], ARGV[2], ARGV[3]
local n = tonumber(ARGV[11])
for i = 1, n - 1 do
  if redis.call('EXISTS', KEYS[6 + 2 * n + i]) == 1 then
    return {'notadir'}
  end
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  return {'isdir'}
end
if ARGV[4] == '0' then
  for _, owner in ipairs(redis.call('HKEYS', KEYS[1])) do
    if owner ~= c then return {'owned', owner} end
  end
end
local vfield = c .. ':' .. path
local current = tonumber(redis.call('HGET', KEYS[2], vfield) or '0')
if mode == 'check' then
  return {'ok', tostring(current)}
end
if tostring(current) ~= ARGV[5] then
  return {'conflict', tostring(current)}
end
local version = current + 1
local existed = redis.call('HEXISTS', KEYS[1], c) == 1
redis.call('HSET', KEYS[2], vfield, version)
redis.call('HSET', KEYS[1], c, ARGV[6] .. '|' .. ARGV[7] .. '|' .. ARGV[8] .. '|' .. version)
local change = 'modified'
if not existed then
  change = 'added'
  for i = 1, n do
    redis.call('HINCRBY', KEYS[6 + i], ARGV[11 + i], 1)
    redis.call('HINCRBY', KEYS[6 + n + i], ARGV[11 + i], 1)
  end
  redis.call('ZADD', KEYS[3], 0, path)
  redis.call('ZADD', KEYS[4], 0, path)
end
local t = redis.call('TIME')
local ts = t[1] .. string.format('%06d', tonumber(t[2]))
local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*',
  'change', change, 'path', path, 'component', c, 'size', ARGV[6],
  'version', version, 'checksum', ARGV[8], 'timestamp', ts)
redis.call('PUBLISH', ARGV[10], id)
return {'ok', tostring(version), id}
"""

_DELETE_LUA = """
-- KEYS: 1 entry, 2 files, 3 component files, 4 events, then n folder children keys and
--       n component folder children keys.
-- ARGV: 1 component, 2 path, 3 events maxlen, 4 wake channel, 5 n, then n child names.
local c, path = ARGV[1], ARGV[2]
local n = tonumber(ARGV[5])
local record = redis.call('HGET', KEYS[1], c)
if not record then
  local owners = redis.call('HKEYS', KEYS[1])
  table.insert(owners, 1, 'missing')
  return owners
end
redis.call('HDEL', KEYS[1], c)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], path)
end
redis.call('ZREM', KEYS[3], path)
for i = 1, n do
  local name = ARGV[5 + i]
  if redis.call('HINCRBY', KEYS[4 + i], name, -1) <= 0 then
    redis.call('HDEL', KEYS[4 + i], name)
  end
  if redis.call('HINCRBY', KEYS[4 + n + i], name, -1) <= 0 then
    redis.call('HDEL', KEYS[4 + n + i], name)
  end
end
local size, mtime, checksum, version = string.match(record, '^(.-)|(.-)|(.-)|(.-)$')
local t = redis.call('TIME')
local ts = t[1] .. string.format('%06d', tonumber(t[2]))
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*',
  'change', 'deleted', 'path', path, 'component', c, 'size', size,
  'version', version, 'checksum', checksum, 'timestamp', ts)
redis.call('PUBLISH', ARGV[4], id)
return {'ok', id}
"""

_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Keys:
    """The Redis key names of one drive.

    Example:
        >>> Keys("d").entry("a.txt")
        'asyncdrive:{d}:e:a.txt'

    """

    def __init__(self, drive: str) -> None:
        self.prefix = f"asyncdrive:{{{drive}}}:"
        self.files = self.prefix + "files"
        self.versions = self.prefix + "versions"
        self.events = self.prefix + "events"
        self.wake = self.prefix + "wake"

    def entry(self, path: str) -> str:
        """Return the key of the owners HASH of file ``path``."""
        return f"{self.prefix}e:{path}"

    def children(self, folder: str) -> str:
        """Return the key of the children HASH of ``folder`` across all components."""
        return f"{self.prefix}d:{folder}"

    def component_children(self, component: str, folder: str) -> str:
        """Return the key of the children HASH of ``folder`` for one component."""
        return f"{self.prefix}cd:{component}:{folder}"

    def component_files(self, component: str) -> str:
        """Return the key of the ZSET of the file paths one component owns."""
        return f"{self.prefix}cf:{component}"

    def lock(self, component: str, path: str) -> str:
        """Return the key of the commit lock of one component's copy of ``path``."""
        return f"{self.prefix}lock:{component}:{path}"


@dataclass(frozen=True, slots=True)
class PutOutcome:
    """What the put script answered: ``status`` is ``ok`` or the reason it refused."""

    status: str
    detail: str = ""
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One raw entry of the change log."""

    id: str
    change: str
    path: str
    component: str


def parse_record(path: str, component: str, record: str) -> FileInfo:
    """Turn an owners-HASH value ``size|mtime|checksum|version`` into a `FileInfo`."""
    size, mtime, checksum, version = record.split("|")
    return FileInfo(
        path=path,
        size=int(size),
        mtime=float(mtime),
        checksum=checksum,
        version=int(version),
        component_name=component,
    )


class Index:
    """The queries and atomic updates of one drive's index, on one Redis client."""

    def __init__(self, client: aioredis.Redis, drive: str) -> None:
        self.client = client
        self.keys = Keys(drive)
        self.events_maxlen = DEFAULT_EVENTS_MAXLEN
        self._put = client.register_script(_PUT_LUA)
        self._delete = client.register_script(_DELETE_LUA)
        self._unlock = client.register_script(_UNLOCK_LUA)

    # -- reads -------------------------------------------------------------------------------

    async def owners(self, path: str) -> dict[str, FileInfo]:
        """Return every component's copy of file ``path`` (empty if there is none)."""
        raw: dict[str, str] = await self.client.hgetall(self.keys.entry(path))  # type: ignore[assignment]
        return {c: parse_record(path, c, rec) for c, rec in raw.items()}

    async def owners_many(self, paths: Sequence[str]) -> list[dict[str, FileInfo]]:
        """`owners` for many paths in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for path in paths:
                pipe.hgetall(self.keys.entry(path))
            raws: list[dict[str, str]] = await pipe.execute()
        return [
            {c: parse_record(p, c, rec) for c, rec in raw.items()}
            for p, raw in zip(paths, raws, strict=True)
        ]

    async def kind(self, path: str, component: str | None = None) -> tuple[str | None, str]:
        """Return (``"file"``, ``"folder"`` or None, id of the newest event), atomically.

        ``component`` restricts what counts to that component's files. The event id is the
        point from which to wait for ``path`` to appear, with nothing missed in between.
        """
        folder_key = (
            self.keys.children(path)
            if component is None
            else self.keys.component_children(component, path)
        )
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hkeys(self.keys.entry(path))
            pipe.exists(folder_key)
            pipe.xrevrange(self.keys.events, "+", "-", count=1)
            owners, is_folder, newest = await pipe.execute()
        cursor = str(newest[0][0]) if newest else "0-0"
        if path == "":
            return "folder", cursor
        if owners if component is None else component in owners:
            return "file", cursor
        return ("folder" if is_folder else None), cursor

    async def list_children(self, folder: str, component: str | None) -> tuple[bool, list[str]]:
        """Return (folder is a file, names directly below ``folder``), in one round trip."""
        key = (
            self.keys.children(folder)
            if component is None
            else self.keys.component_children(component, folder)
        )
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.exists(self.keys.entry(folder))
            pipe.hkeys(key)
            is_file, names = await pipe.execute()
        return bool(is_file) and folder != "", names

    async def list_files(self, folder: str, component: str | None) -> tuple[bool, list[str]]:
        """Return (folder is a file, every file path below ``folder``), in one round trip.

        ``folder`` ``""`` is the whole drive. Paths are sorted by name.
        """
        key = self.keys.files if component is None else self.keys.component_files(component)
        if folder == "":
            low, high = "-", "+"
        else:
            # '0' is the character after '/': the range holds exactly the paths below folder/.
            low, high = f"[{folder}/", f"({folder}0"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.exists(self.keys.entry(folder))
            pipe.zrangebylex(key, low, high)
            is_file, paths = await pipe.execute()
        return bool(is_file) and folder != "", paths

    async def read_events(self, after: str, block_ms: int) -> list[Event]:
        """Wait up to ``block_ms`` for events after id ``after`` and return them."""
        reply: Any = await self.client.xread({self.keys.events: after}, block=block_ms, count=1000)
        events: list[Event] = []
        for _stream, entries in reply or []:
            for event_id, fields in entries:
                events.append(
                    Event(event_id, fields["change"], fields["path"], fields["component"])
                )
        return events

    # -- atomic updates ----------------------------------------------------------------------

    async def check_put(self, component: str, path: str, allow_duplicates: bool) -> PutOutcome:
        """Check that ``component`` may put file ``path``; ``detail`` is the current version."""
        return await self._run_put(component, path, "check", allow_duplicates, 0, 0, 0.0, "")

    async def commit_put(
        self,
        component: str,
        path: str,
        allow_duplicates: bool,
        expected_version: int,
        size: int,
        mtime: float,
        checksum: str,
    ) -> PutOutcome:
        """Record a new version of ``path``, append its event and publish a wake-up, atomically.

        Refuses (``status != "ok"``) if the folder structure or ownership forbids it, or if the
        version is no longer ``expected_version``.
        """
        return await self._run_put(
            component, path, "commit", allow_duplicates, expected_version, size, mtime, checksum
        )

    async def _run_put(
        self,
        component: str,
        path: str,
        mode: str,
        allow_duplicates: bool,
        expected_version: int,
        size: int,
        mtime: float,
        checksum: str,
    ) -> PutOutcome:
        folders = parent_dirs(path)
        names = path.split("/")
        keys = [
            self.keys.entry(path),
            self.keys.versions,
            self.keys.files,
            self.keys.component_files(component),
            self.keys.events,
            self.keys.children(path),
            *(self.keys.children(f) for f in folders),
            *(self.keys.component_children(component, f) for f in folders),
            *(self.keys.entry(f) for f in folders[1:]),
        ]
        args = [
            component,
            path,
            mode,
            "1" if allow_duplicates else "0",
            str(expected_version),
            str(size),
            repr(mtime),
            checksum,
            str(self.events_maxlen),
            self.keys.wake,
            str(len(folders)),
            *names,
        ]
        reply: list[str] = await self._put(keys=keys, args=args)
        status = reply[0]
        if status == "notadir":
            # Name the first ancestor that is a file, for the error message.
            blocking = await self._first_file_ancestor(folders[1:])
            return PutOutcome("notadir", blocking)
        if status == "ok":
            return PutOutcome("ok", reply[1], reply[2] if len(reply) > 2 else "")
        return PutOutcome(status, reply[1] if len(reply) > 1 else "")

    async def _first_file_ancestor(self, folders: Sequence[str]) -> str:
        async with self.client.pipeline(transaction=False) as pipe:
            for folder in folders:
                pipe.exists(self.keys.entry(folder))
            found = await pipe.execute()
        return next((f for f, hit in zip(folders, found, strict=True) if hit), "")

    async def commit_delete(self, component: str, path: str) -> tuple[bool, list[str]]:
        """Remove ``component``'s copy of ``path``; return (done, other owners if not done)."""
        folders = parent_dirs(path)
        keys = [
            self.keys.entry(path),
            self.keys.files,
            self.keys.component_files(component),
            self.keys.events,
            *(self.keys.children(f) for f in folders),
            *(self.keys.component_children(component, f) for f in folders),
        ]
        args = [
            component,
            path,
            str(self.events_maxlen),
            self.keys.wake,
            str(len(folders)),
            *path.split("/"),
        ]
        reply: list[str] = await self._delete(keys=keys, args=args)
        if reply[0] == "missing":
            return False, sorted(reply[1:])
        return True, []

    # -- locks -------------------------------------------------------------------------------

    async def lock(self, component: str, path: str, *, ttl: float, timeout: float) -> str:
        """Take the commit lock of ``component``'s ``path``; return its token.

        Commits are short (a rename and one Lua call), so contention is brief: retry with a
        growing pause. Raises TimeoutError when ``timeout`` passes first.
        """
        key = self.keys.lock(component, path)
        token = secrets.token_hex(8)
        deadline = time.monotonic() + timeout
        pause = 0.001
        while not await self.client.set(key, token, nx=True, px=int(ttl * 1000)):
            if time.monotonic() >= deadline:
                raise TimeoutError(key)
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.05)
        return token

    async def unlock(self, component: str, path: str, token: str) -> None:
        """Release a lock taken by `lock`, unless it expired and someone else holds it now."""
        await self._unlock(keys=[self.keys.lock(component, path)], args=[token])

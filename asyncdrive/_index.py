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
    asyncdrive:{name}:trimmed    STRING  id of the newest event trimmed from the log
    asyncdrive:{name}:groups     HASH  consumer group -> what its members watch ("r:D", "d:D"),
                                       and "last:" + group -> its last event delivered
    asyncdrive:{name}:wake       pub/sub channel, the id of every new event
    asyncdrive:{name}:lock:C:P   STRING  short lock held while C commits P

Listing a folder reads one HASH; a recursive listing reads one ZSET range: both cost what the
answer costs, not what the drive holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import redis.exceptions
from redis.commands.core import AsyncScript

from ._client import CONNECTION_LOST, GatedCluster, RedisClient
from ._config import DEFAULT_EVENTS_MAXLEN
from ._events import DriveEvent, event_from_fields
from ._models import FileInfo, GroupInfo
from ._paths import parent_dirs
from ._storage import DiskFile
from ._tasks import to_its_end
from ._wire import Wire, WirePool

logger = logging.getLogger("asyncdrive")

# Shared by every script that changes the index: KEYS[1] is the change log, KEYS[2] the id of
# the newest event trimmed from it; ARGV[1] the most events to keep, ARGV[2] the most age in
# ms (0: no limit), ARGV[3] the wake-up channel. The trimmed id lets a watcher tell, exactly,
# whether an event it has not seen yet was trimmed (then its cursor has expired).
_APPEND_EVENT_LUA = """
local function append_event(fields)
  local events, trimmed = KEYS[1], KEYS[2]
  local maxlen, max_age = tonumber(ARGV[1]), tonumber(ARGV[2])
  local t = redis.call('TIME')
  table.insert(fields, 'timestamp')
  table.insert(fields, t[1] .. string.format('%06d', tonumber(t[2])))
  local id = redis.call('XADD', events, '*', unpack(fields))
  local len = redis.call('XLEN', events)
  -- Trim in batches (a tenth of the limit at a time) to keep each call cheap.
  if len > maxlen + math.max(1, math.min(1000, math.floor(maxlen / 10))) then
    local doomed = redis.call('XRANGE', events, '-', '+', 'COUNT', len - maxlen)
    redis.call('XTRIM', events, 'MAXLEN', maxlen)
    redis.call('SET', trimmed, doomed[#doomed][1])
  end
  if max_age > 0 then
    local cutoff = (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) - max_age
    local oldest = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)
    if #oldest > 0 and tonumber(string.match(oldest[1][1], '^(%d+)')) < cutoff then
      local last = redis.call('XREVRANGE', events, '(' .. cutoff .. '-0', '-', 'COUNT', 1)
      redis.call('XTRIM', events, 'MINID', cutoff .. '-0')
      redis.call('SET', trimmed, last[1][1])
    end
  end
  -- A wake-up for whoever subscribes (not asyncdrive itself): a user without rights on the
  -- channel (an ACL user's default, 'resetchannels') must not fail a commit made already.
  redis.pcall('PUBLISH', ARGV[3], id)
  return id
end
"""

_PUT_LUA = (
    _APPEND_EVENT_LUA
    + """
-- KEYS: 1-2 events (above), 3 entry, 4 versions, 5 files, 6 component files,
--       7 children of the path, then n folder children keys, n component folder children
--       keys, n-1 ancestor entries.
-- ARGV: 1-3 events (above), 4 component, 5 path, 6 mode (check|lock|commit|create),
--       7 allow duplicates (0|1), 8 expected version, 9 size, 10 mtime, 11 checksum,
--       12 precondition on the component's copy ("": none, "absent", or its version),
--       13 n, then n child names (one per folder level).
-- Last KEY: the commit lock of (component, path); last three ARGV: '1' if the caller has
-- seen the drive's index (then a commit without it refuses: the server lost it, and a
-- commit would start a new one that hides the loss), the lock's token and lease (ms).
-- Modes: "check" checks; "lock" checks, then takes the lock (or answers "locked");
-- "commit" commits and, on success, releases the lock; "create" commits a put that took
-- no lock, unless another writer holds it now (then "locked").
local c, path, mode = ARGV[4], ARGV[5], ARGV[6]
local n = tonumber(ARGV[13])
local lock, token, lease = KEYS[#KEYS], ARGV[#ARGV - 1], ARGV[#ARGV]
if mode == 'lock' then
  local holder = redis.call('GET', lock)
  if holder and holder ~= token then return {'locked'} end
elseif mode == 'create' then
  if redis.call('EXISTS', lock) == 1 then return {'locked'} end
end
for i = 1, n - 1 do
  if redis.call('EXISTS', KEYS[7 + 2 * n + i]) == 1 then
    return {'notadir'}
  end
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  return {'isdir'}
end
if ARGV[7] == '0' then
  for _, owner in ipairs(redis.call('HKEYS', KEYS[3])) do
    if owner ~= c then return {'owned', owner} end
  end
end
local mine = redis.call('HGET', KEYS[3], c)
local mine_version = mine and string.match(mine, '|(%d+)$') or '0'
if ARGV[12] == 'absent' and mine then
  return {'exists', mine_version}
elseif ARGV[12] ~= '' and ARGV[12] ~= 'absent' and ARGV[12] ~= mine_version then
  return {'version', mine_version}
end
local vfield = c .. ':' .. path
local current = tonumber(redis.call('HGET', KEYS[4], vfield) or '0')
if mode == 'check' then
  return {'ok', tostring(current)}
end
if mode == 'lock' then
  redis.call('SET', lock, token, 'PX', lease)
  return {'ok', tostring(current)}
end
if ARGV[#ARGV - 2] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then
  return {'indexlost'}
end
if tostring(current) ~= ARGV[8] then
  return {'conflict', tostring(current)}
end
local version = current + 1
local existed = mine ~= false
redis.call('HSET', KEYS[4], vfield, version)
redis.call('HSET', KEYS[3], c, ARGV[9] .. '|' .. ARGV[10] .. '|' .. ARGV[11] .. '|' .. version)
local change = 'modified'
if not existed then
  change = 'added'
  for i = 1, n do
    redis.call('HINCRBY', KEYS[7 + i], ARGV[13 + i], 1)
    redis.call('HINCRBY', KEYS[7 + n + i], ARGV[13 + i], 1)
  end
  redis.call('ZADD', KEYS[5], 0, path)
  redis.call('ZADD', KEYS[6], 0, path)
end
local id = append_event({'change', change, 'path', path, 'component', c, 'size', ARGV[9],
  'version', tostring(version), 'checksum', ARGV[11]})
if mode == 'commit' and redis.call('GET', lock) == token then redis.call('DEL', lock) end
return {'ok', tostring(version), id}
"""
)

_DELETE_LUA = (
    _APPEND_EVENT_LUA
    + """
-- KEYS: 1-2 events (above), 3 entry, 4 files, 5 component files, then n folder children
--       keys and n component folder children keys.
-- ARGV: 1-3 events (above), 4 component, 5 path, 6 n, then n child names.
local c, path = ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])
local record = redis.call('HGET', KEYS[3], c)
if not record then
  local owners = redis.call('HKEYS', KEYS[3])
  table.insert(owners, 1, 'missing')
  return owners
end
redis.call('HDEL', KEYS[3], c)
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[4], path)
end
redis.call('ZREM', KEYS[5], path)
for i = 1, n do
  local name = ARGV[6 + i]
  if redis.call('HINCRBY', KEYS[5 + i], name, -1) <= 0 then
    redis.call('HDEL', KEYS[5 + i], name)
  end
  if redis.call('HINCRBY', KEYS[5 + n + i], name, -1) <= 0 then
    redis.call('HDEL', KEYS[5 + n + i], name)
  end
end
local size, mtime, checksum, version = string.match(record, '^(.-)|(.-)|(.-)|(.-)$')
local id = append_event({'change', 'deleted', 'path', path, 'component', c, 'size', size,
  'version', version, 'checksum', checksum})
return {'ok', id, version}
"""
)

_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The release of a lock whose request was cut short, where the request may reach the
# server after it (on another connection): a lock taken by it goes, and where none is
# held, a short-lived placeholder stands in its place, so that the request, if it comes
# later, finds the lock held and takes nothing. ARGV: 1 token, 2 the placeholder's life (ms).
_UNLOCK_CUT_SHORT_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('DEL', KEYS[1]) end
if not holder then redis.call('SET', KEYS[1], 'cut-short:' .. ARGV[1], 'PX', ARGV[2]) end
return 0
"""

#: How long the placeholder of `_UNLOCK_CUT_SHORT_LUA` keeps other writers of the path
#: waiting (instead of the lock's whole lease, had the request come after the release).
CUT_SHORT_HOLD = 1.0

#: How many commands (or a command's members) a bulk write sends at once.
_BULK = 1000
#: Keys a SCAN round trip of `Index.replace_all` looks at (the server's whole key space).
_SCAN_COUNT = 1000

# Reads, atomic and in one round trip, on a Cluster (elsewhere, MULTI/EXEC): redis-py's
# cluster client runs each command queued in a transaction on a thread and event loop of its
# own, joined from the caller's loop (blocked meanwhile, and left waiting for good where a
# signal interrupted the join). KEYS: the key each command reads (its first argument).
# ARGV: for each command, its name, the number of its other arguments, then those. Reply:
# the commands' replies.
_READS_LUA = """
local replies, at = {}, 1
for i, key in ipairs(KEYS) do
  local others = tonumber(ARGV[at + 1])
  replies[i] = redis.call(ARGV[at], key, unpack(ARGV, at + 2, at + 1 + others))
  at = at + 2 + others
end
return replies
"""

# A read of two small keys, atomic and in one round trip: for a reply this small a script
# costs less than MULTI/EXEC (~30 us here). Listings stay in MULTI/EXEC (but on a Cluster:
# `_READS_LUA`): a script copies its reply through a Lua table, which costs more than that
# from a few hundred names up.
# KEYS: 1 a file's entry, 2 the children of the same path as a folder.
_KIND_LUA = """
return {redis.call('HKEYS', KEYS[1]), redis.call('EXISTS', KEYS[2])}
"""


# One step of a consumer-group member, atomic: acknowledge the event it handled, claim one
# that a member has held unacknowledged too long, else read the group's next event: unless
# events after the last one delivered to the group were trimmed from the log unread, which is
# reported (once: the group moves past them) instead of skipped in silence. The group is
# created where missing, at ARGV[5] ('0': the oldest event retained). Each step also checks
# what the member watches (ARGV[6]) against what the group watches (kept in KEYS[3]): members
# share one position, so they must watch one path. Another path is refused while any other
# member has stepped within ARGV[7] ms, or holds an event it took within the claim idle time
# (it works on it), and otherwise becomes the group's (its members left, or are gone). KEYS:
# 1 the change log, 2 its trim mark, 3 the groups' paths. ARGV: 1 group, 2 member, 3 claim
# idle (ms), 4 the event to acknowledge ('' none), 5 the group's starting id, 6 the
# member's path, 7 how recently a member must have stepped to count (ms), 8 '1': the member
# has read before, 9 '1': a named member's first steps. Replies: {'event', {id, fields}},
# {'none', last delivered id}, {'expired', last delivered id, trim mark}, {'path', the
# group's path}, {'removed'}, {'skipped', last delivered id}: events of other paths only
# (acknowledged; more may follow), or {'lost', ids}: events held by a member longer than the
# claim idle time (or by a member of its name), trimmed before another could take them.
# An event or loss of what a member of its name held (ARGV[9]) ends with 'own'.
_GROUP_STEP_LUA = """
local SKIP_AT_MOST = 200
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-?(%d*)$')
  local bm, bs = string.match(b, '^(%d+)-?(%d*)$')
  am, as, bm, bs = tonumber(am), tonumber(as) or 0, tonumber(bm), tonumber(bs) or 0
  return am > bm or (am == bm and as > bs)
end
local events, group, member = KEYS[1], ARGV[1], ARGV[2]
local trimmed = redis.call('GET', KEYS[2]) or '0-0'
-- How many times the group has handed out the event it holds as ``id``, this time included.
local function deliveries(id)
  local held = redis.call('XPENDING', events, group, id, id, 1)
  return held[1] and held[1][4] or 1
end
-- (pcall: the group may have been removed meanwhile, its events with it)
if ARGV[4] ~= '' then pcall(redis.call, 'XACK', events, group, ARGV[4]) end
-- The group's last delivered event, as kept beside its path ('last:' and a name: no group
-- has a ':' in its name), so that a step costs what one group costs, not all of them. Read
-- from the log's list of groups only for a group older than that, or if it is gone.
-- The kept position may lag the group's own (moved by an older version of this script, or
-- by hand): it is read again before it is reported as trimmed past, and waits start after
-- the log's newest event once the group has nothing more to read.
local function listed_last()
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', events)
  for _, g in ipairs(ok and groups or {}) do
    local fields = {}
    for i = 1, #g, 2 do fields[g[i]] = g[i + 1] end
    if fields['name'] == group then return fields['last-delivered-id'] end
  end
end
local kept_last = 'last:' .. group
local last = redis.call('HGET', KEYS[3], kept_last)
if last and not pcall(redis.call, 'XINFO', 'CONSUMERS', events, group) then last = nil end
if not last then
  last = listed_last()
  if not last then
    -- A member that has read the group before finds it gone: removed (`remove_group`).
    if ARGV[8] == '1' then return {'removed'} end
    last = ARGV[5] == '0' and trimmed or ARGV[5]
    redis.call('XGROUP', 'CREATE', events, group, last, 'MKSTREAM')
  end
  redis.call('HSET', KEYS[3], kept_last, last)
end
local path = redis.call('HGET', KEYS[3], group)
if path ~= ARGV[6] then
  if path then
    for _, m in ipairs(redis.call('XINFO', 'CONSUMERS', events, group)) do
      local fields = {}
      for i = 1, #m, 2 do fields[m[i]] = m[i + 1] end
      local idle = fields['idle']
      local holding = fields['pending'] > 0 and idle < tonumber(ARGV[3])
      -- (its own name's too: two live members of one name must not switch the group's
      -- path back and forth, each dropping the other's events)
      if idle < tonumber(ARGV[7]) or holding then
        return {'path', path}
      end
    end
  end
  redis.call('HSET', KEYS[3], group, ARGV[6])
end
-- A named member's first steps (ARGV[9]): what a member of its name held (it was
-- restarted) comes back to it first, one event a step until none is left ('own': the
-- member asks again), not to another after claim_idle.
if ARGV[9] == '1' then
  local own = redis.call('XREADGROUP', 'GROUP', group, member, 'COUNT', 1, 'STREAMS', events, '0')
  local entries = own and own[1] and own[1][2] or {}
  if #entries > 0 then
    if entries[1][2] then return {'event', entries[1], 'own', deliveries(entries[1][1])} end
    redis.call('XACK', events, group, entries[1][1])  -- trimmed while held
    return {'lost', {entries[1][1]}, 'own'}
  end
end
-- Whether an event (its fields) is of the path the group's members watch.
local kind, folder = string.sub(ARGV[6], 1, 1), string.sub(ARGV[6], 3)
local function watched(fields)
  local p
  for i = 1, #fields, 2 do
    if fields[i] == 'path' then p = fields[i + 1] break end
  end
  if not p or p == folder then return true end
  if kind == 'r' then
    return folder == '' or string.sub(p, 1, #folder + 1) == folder .. '/'
  end
  return (string.match(p, '^(.*)/[^/]*$') or '') == folder
end
-- The oldest event a member has held unacknowledged for claim_idle: taken over, or, if the
-- log no longer has it (trimmed while held), acknowledged and reported. (Not XAUTOCLAIM,
-- which reports and drops every trimmed entry held, however briefly: a live member's too.)
-- One of another path (held by a member of the path the group watched before this one took
-- it over) is acknowledged, as the old path's events not yet read are ('skipped').
local held = redis.call('XPENDING', events, group, 'IDLE', ARGV[3], '-', '+', 1)
if #held > 0 then
  local id = held[1][1]
  if #redis.call('XRANGE', events, id, id) == 0 then
    redis.call('XACK', events, group, id)
    return {'lost', {id}}
  end
  local claimed = redis.call('XCLAIM', events, group, member, ARGV[3], id)
  if #claimed > 0 then
    if watched(claimed[1][2]) then return {'event', claimed[1], '', deliveries(id)} end
    redis.call('XACK', events, group, id)
    return {'skipped', last}
  end
end
if after(trimmed, last) then
  last = listed_last() or last
  redis.call('HSET', KEYS[3], kept_last, last)
end
if after(trimmed, last) then
  redis.call('XGROUP', 'SETID', events, group, trimmed)
  redis.call('HSET', KEYS[3], kept_last, trimmed)
  return {'expired', last, trimmed}
end
-- The next event of the path the members watch. Those of other paths are acknowledged
-- here, up to a bounded number a step ('skipped': there may be more, step again at once),
-- not handed out one round trip each (a member of a folder of a busy drive).
for n = 1, SKIP_AT_MOST do
  local read = redis.call('XREADGROUP', 'GROUP', group, member, 'COUNT', 1, 'STREAMS', events, '>')
  if not (read and #read[1][2] > 0) then break end
  local entry = read[1][2][1]
  redis.call('HSET', KEYS[3], kept_last, entry[1])
  last = entry[1]
  if watched(entry[2]) then return {'event', entry, '', 1} end
  redis.call('XACK', events, group, entry[1])
  if n == SKIP_AT_MOST then return {'skipped', last} end
end
-- Nothing to read: the group is at the log's newest event, or past it.
local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
if #newest > 0 and after(newest[1][1], last) then
  last = newest[1][1]
  redis.call('HSET', KEYS[3], kept_last, last)
end
return {'none', last}
"""

# The end of a group member's watch: acknowledge its last event, and leave the group if it
# holds none (a member holding events stays, for another to claim them). Members gone
# without leaving (killed) and holding nothing go too, once idle for ARGV[4] ms: a member
# holding nothing loses nothing by it (a live one is back at its next read). KEYS: 1 the
# change log. ARGV: 1 group, 2 member, 3 the event to acknowledge ('' none), 4 idle (ms).
_GROUP_LEAVE_LUA = """
if ARGV[3] ~= '' then pcall(redis.call, 'XACK', KEYS[1], ARGV[1], ARGV[3]) end
local ok, members = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, m in ipairs(ok and members or {}) do
  local fields = {}
  for i = 1, #m, 2 do fields[m[i]] = m[i + 1] end
  local gone = fields['name'] == ARGV[2] or fields['idle'] >= tonumber(ARGV[4])
  if fields['pending'] == 0 and gone then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
  end
end
return 0
"""

# A drive's consumer groups: for each, its name, what its members watch (as the groups'
# paths keep it, '' if not kept), members, events held unacknowledged, last delivered event,
# lag ('' where the server cannot count it) and the least idle member's idle time (ms, -1:
# no member). KEYS: 1 the change log, 2 the groups' paths.
_GROUPS_LUA = """
local function fields_of(flat)
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  return fields
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
local found = {}
for _, g in ipairs(ok and groups or {}) do
  local fields = fields_of(g)
  local idle = -1
  for _, m in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], fields['name'])) do
    local member_idle = fields_of(m)['idle']
    if idle < 0 or member_idle < idle then idle = member_idle end
  end
  local lag = fields['lag']
  table.insert(found, {
    fields['name'], redis.call('HGET', KEYS[2], fields['name']) or '', fields['consumers'],
    fields['pending'], fields['last-delivered-id'], lag and tostring(lag) or '', idle,
  })
end
return found
"""

# Remove a consumer group: its position, its members and what they hold. Unless ARGV[3] is
# '1', refused while a member holds an event or read within ARGV[2] ms: {'busy', member,
# events held, idle ms}. {'removed'} or {'none'} (no such group; what the groups' paths kept
# of it is removed all the same). KEYS: 1 the change log, 2 the groups' paths. ARGV: 1 group.
_GROUP_REMOVE_LUA = """
local group = ARGV[1]
local ok, members = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], group)
if ok and ARGV[3] ~= '1' then
  for _, m in ipairs(members) do
    local fields = {}
    for i = 1, #m, 2 do fields[m[i]] = m[i + 1] end
    if fields['pending'] > 0 or fields['idle'] < tonumber(ARGV[2]) then
      return {'busy', fields['name'], fields['pending'], fields['idle']}
    end
  end
end
redis.call('HDEL', KEYS[2], group, 'last:' .. group)
if not ok then return {'none'} end
redis.call('XGROUP', 'DESTROY', KEYS[1], group)
return {'removed'}
"""

#: The commands of `_DENIED_LUA` that change a drive (the others only read).
WRITES = frozenset(
    {"HSET", "HDEL", "HINCRBY", "ZADD", "ZREM", "SET", "DEL", "XADD", "XTRIM", "XGROUP"}
    | {"XREADGROUP", "XACK", "XCLAIM"}
)
#: Of `WRITES`, those also run outside scripts (the locks, `rebuild`'s pipeline).
DIRECT_WRITES = frozenset({"SET", "DEL", "HSET", "ZADD", "HINCRBY"})

# What the server's ACL denies the connection's user, of the commands asyncdrive runs on a
# drive's keys: checked once at connect, so that a denied command is reported then, not met
# halfway through a commit script (which Redis does not roll back). Redis 7+ / Valkey
# (redis.acl_check_cmd); older servers answer nothing. KEYS: 1 a file's entry, 2 a folder's
# children, 3 the file list, 4 a lock, 5 the change log, 6 the groups' paths. Reply: the
# commands denied on them.
_DENIED_LUA = """
if not redis.acl_check_cmd then return {} end
local denied = {}
local function check(command, ...)
  local ok, allowed = pcall(redis.acl_check_cmd, command, ...)
  if ok and not allowed then denied[#denied + 1] = command end
end
local entry, children, files, lock, events, groups = unpack(KEYS)
check('HGETALL', entry); check('HGET', entry, 'c'); check('HSET', entry, 'c', 'v')
check('HDEL', entry, 'c'); check('MULTI'); check('EXEC'); check('TIME')
check('HINCRBY', children, 'n', '1'); check('HKEYS', children)
check('ZADD', files, '0', 'p'); check('ZREM', files, 'p'); check('ZRANGEBYLEX', files, '-', '+')
check('SET', lock, 'v'); check('GET', lock); check('DEL', lock); check('EXISTS', lock)
check('XADD', events, '*', 'f', 'v'); check('XREAD', 'STREAMS', events, '0')
check('XRANGE', events, '-', '+'); check('XREVRANGE', events, '+', '-')
check('XLEN', events); check('XTRIM', events, 'MAXLEN', '1')
check('XGROUP', 'CREATE', events, 'g', '0')
check('XREADGROUP', 'GROUP', 'g', 'c', 'STREAMS', events, '>')
check('XACK', events, 'g', '0-1'); check('XINFO', 'GROUPS', events); check('HSET', groups, 'g', 'v')
check('XPENDING', events, 'g'); check('XCLAIM', events, 'g', 'c', '0', '0-1')
check('XGROUP', 'SETID', events, 'g', '0'); check('XGROUP', 'DELCONSUMER', events, 'g', 'c')
check('EVALSHA', '0', '1', entry); check('EVALSHA_RO', '0', '1', entry)
return denied
"""

#: How long a member that holds no event may stay idle before a leaving member removes it.
IDLE_MEMBER_MS = 600_000


def _glob_escape(text: str) -> str:
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


@dataclass(frozen=True)
class GroupStep:
    """What one `Index.group_step` found (its ``kind``).

    "event", "none", "skipped" (only events of other paths, acknowledged: step again),
    "expired", "path", "lost", or "removed": the group is gone, removed since this member
    last read it.
    """

    kind: str
    event: DriveEvent | None = None
    #: The id of the last event delivered to the group ("none", "skipped", "expired").
    last: str = ""
    #: The log's trim mark, past the group's last delivered event ("expired").
    trimmed: str = ""
    #: What the group's members watch, which a member watching another path may not ("path").
    path: str = ""
    #: Ids of events a member held, trimmed before any member handled them ("lost").
    lost: list[str] = field(default_factory=list)
    #: The event ("event") or the loss ("lost") is of what a member of this one's name held.
    own: bool = False


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
        self.trimmed = self.prefix + "trimmed"
        self.group_paths = self.prefix + "groups"
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

    def children_of(self, folder: str, component: str | None) -> str:
        """Return `children` of ``folder``, or `component_children` if a component is named."""
        if component is None:
            return self.children(folder)
        return self.component_children(component, folder)

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


def _as_dict(raw: Any) -> dict[str, str]:
    """Return a HGETALL reply as a dict (RESP3 gives a map, RESP2 field, value, ...)."""
    if isinstance(raw, list):
        return dict(zip(raw[::2], raw[1::2], strict=True))
    return raw  # type: ignore[no-any-return]


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

    def __init__(
        self,
        client: RedisClient,
        drive: str,
        *,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
        events_max_age: float = 0.0,
        wire: Wire | None = None,
        readers: WirePool | None = None,
    ) -> None:
        self.client = client
        #: Where the short commands of every file operation go, if given (see `Wire`).
        self.wire = wire
        #: Where watches read the change log, if given (see `WirePool`).
        self.readers = readers
        self.drive = drive
        self.keys = Keys(drive)
        #: Whether this connection has seen the drive's index (`is_indexed`, or a commit of
        #: its own): its commits then refuse to start a new one (see `_PUT_LUA`).
        self.seen_index = False
        self._event_keys = [self.keys.events, self.keys.trimmed]
        # (in ms, at least 1: below, 0 would mean no age limit)
        max_age_ms = math.ceil(events_max_age * 1000)
        self._event_args = [str(events_maxlen), str(max_age_ms), self.keys.wake]
        self._put = client.register_script(_PUT_LUA)
        self._delete = client.register_script(_DELETE_LUA)
        self._unlock = client.register_script(_UNLOCK_LUA)
        self._unlock_cut_short = client.register_script(_UNLOCK_CUT_SHORT_LUA)
        self._kind = client.register_script(_KIND_LUA)
        self._reads = client.register_script(_READS_LUA)
        self._group_step = client.register_script(_GROUP_STEP_LUA)
        self._group_leave = client.register_script(_GROUP_LEAVE_LUA)
        self._groups = client.register_script(_GROUPS_LUA)
        self._group_remove = client.register_script(_GROUP_REMOVE_LUA)
        #: Locks (component, path, token) this connection took and could not release, the
        #: server out of reach: released when it answers again (`release_unreleased`).
        self.unreleased: list[tuple[str, str, str]] = []
        #: Whether scripts that only read run as such (``EVALSHA_RO``), which a user allowed
        #: only to read the drive's keys (ACL ``%R~``) may run: set by `denied_commands`
        #: where the server has them (Redis 7+, Valkey).
        self.read_only_scripts = False

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        if self.wire is None:
            return await script(keys=keys, args=args)
        return await self.wire.run_script(script, keys, args)

    async def _run_reading(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        """`_run` a script that only reads: as ``EVALSHA_RO`` where `read_only_scripts`."""
        if not self.read_only_scripts:
            return await self._run(script, keys, args)
        if self.wire is not None:
            return await self.wire.run_script(script, keys, args, read_only=True)
        try:
            return await self.client.evalsha_ro(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            source = cast(str, script.script)  # (registered from our str constants)
            return await self.client.eval_ro(source, len(keys), *keys, *args)

    # -- reads -------------------------------------------------------------------------------

    async def last_version(self, component: str, path: str) -> int:
        """Return the last version of ``component``'s ``path`` the index counted (0: none).

        Kept after a delete: versions never repeat.
        """
        field = f"{component}:{path}"
        value: Any
        if self.wire is None:
            value = await self.client.hget(self.keys.versions, field)
        else:
            value = await self.wire.call("HGET", self.keys.versions, field)
        return int(value or 0)

    async def owners(self, path: str) -> dict[str, FileInfo]:
        """Return every component's copy of file ``path`` (empty if there is none)."""
        key = self.keys.entry(path)
        raw: dict[str, str]
        if self.wire is None:
            raw = await self.client.hgetall(key)  # type: ignore[assignment]
        else:
            raw = _as_dict(await self.wire.call("HGETALL", key))
        self.seen_index = self.seen_index or bool(raw)
        return {c: parse_record(path, c, rec) for c, rec in raw.items()}

    async def owners_many(self, paths: Sequence[str]) -> list[dict[str, FileInfo]]:
        """`owners` for many paths in one round trip."""
        return [owners for owners, _ in await self.describe_many(paths, None, folders=False)]

    async def describe_many(
        self, paths: Sequence[str], component: str | None, *, folders: bool = True
    ) -> list[tuple[dict[str, FileInfo], bool]]:
        """Return, for each path, its copies (as `owners`) and whether it is a folder.

        One round trip for all, and one more to look whether those that no one owns are
        folders (``folders=False``: none looked up, all False). A folder is one that holds
        files (``component``'s, if named).
        """
        replies = await self._pipelined([("HGETALL", self.keys.entry(path)) for path in paths])
        described = [
            ({c: parse_record(path, c, rec) for c, rec in _as_dict(raw).items()}, False)
            for path, raw in zip(paths, replies, strict=True)
        ]
        unowned = [number for number, (owners, _) in enumerate(described) if not owners]
        if folders and unowned:
            commands = [("EXISTS", self.keys.children_of(paths[n], component)) for n in unowned]
            for number, exists in zip(unowned, await self._pipelined(commands), strict=True):
                described[number] = ({}, bool(exists))
        return described

    async def _pipelined(self, commands: Sequence[tuple[str, ...]]) -> list[Any]:
        """Send ``commands`` in one round trip (not a transaction); return their replies."""
        if self.wire is None:
            async with self.client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies: list[Any] = await pipe.execute()
            return replies
        return await self.wire.call_many(commands)

    async def kind(self, path: str, component: str | None = None) -> str | None:
        """Return ``"file"``, ``"folder"`` or None for ``path`` (seen by one component or all)."""
        if path == "":
            return "folder"
        keys = [self.keys.entry(path), self.keys.children_of(path, component)]
        owners, is_folder = await self._run_reading(self._kind, keys, [])
        if owners if component is None else component in owners:
            return "file"
        return "folder" if is_folder else None

    async def list_children(self, folder: str, component: str | None) -> tuple[bool, list[str]]:
        """Return (folder is a file, names directly below ``folder``), in one round trip."""
        is_file, names = await self._atomically(
            ("EXISTS", self.keys.entry(folder)), ("HKEYS", self.keys.children_of(folder, component))
        )
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
        is_file, paths = await self._atomically(
            ("EXISTS", self.keys.entry(folder)), ("ZRANGEBYLEX", key, low, high)
        )
        return bool(is_file) and folder != "", paths

    async def _atomically(self, *commands: tuple[str, ...]) -> list[Any]:
        """Run ``commands`` (reads) in one MULTI/EXEC, in one round trip; return their replies.

        On a Cluster, as a script (`_READS_LUA`): each command reads one key, its first
        argument.
        """
        if self.wire is None:
            keys = [key for _name, key, *_rest in commands]
            args = [a for name, _key, *rest in commands for a in (name, str(len(rest)), *rest)]
            return list(await self._run_reading(self._reads, keys, args))
        *_, results = await self.wire.call_many([("MULTI",), *commands, ("EXEC",)])
        for result in results:
            if isinstance(result, Exception):  # an error reply of one of the commands
                raise result
        return list(results)

    async def read_events(
        self, after: str, block_ms: int | None, count: int
    ) -> tuple[list[DriveEvent], str, tuple[str, int] | None]:
        """Wait up to ``block_ms`` for events after id ``after``; return them and the trim mark.

        ``block_ms=None``: no wait, what is there now. The trim mark (the newest event
        trimmed from the log) is read in the same pipeline, right after the wait: if it is
        newer than ``after``, events after ``after`` were lost. Third: the server read
        (host, port), where known (not on a Cluster, nor through a unix socket).
        """
        if self.readers is None:  # a Cluster: its client routes the pipeline to the drive's node
            async with cast(GatedCluster, self.client).waiting_pipeline() as pipe:
                # Pipelined on one connection: GET runs as soon as XREAD returns.
                pipe.xread({self.keys.events: after}, block=block_ms, count=count)
                pipe.get(self.keys.trimmed)
                reply, trimmed = await pipe.execute()
            events = [
                event_from_fields(self.drive, event_id, fields)
                for _stream, entries in reply or []
                for event_id, fields in entries
            ]
            return events, trimmed or "0-0", None
        # The same two commands on a wire of their own: every event waits for this on its
        # way (redis-py's pipeline cost ~280 µs of CPU a read more, its connection ~40 µs
        # of latency more an event, measured).
        wait = () if block_ms is None else ("BLOCK", block_ms)
        commands = [
            ("XREAD", "COUNT", count, *wait, "STREAMS", self.keys.events, after),
            ("GET", self.keys.trimmed),
        ]
        async with self.readers.borrowed() as wire:
            raw, trimmed = await wire.call_many(commands)
            server = wire.server
        # RESP3 (redis-py's default) answers a map of stream -> entries, RESP2 a list of
        # [stream, entries]; None when the wait ended without events.
        streams = raw.values() if isinstance(raw, dict) else [s[1] for s in raw or []]
        events = [
            event_from_fields(self.drive, event_id, dict(zip(flat[::2], flat[1::2], strict=True)))
            for entries in streams
            for event_id, flat in entries
        ]
        return events, trimmed or "0-0", server

    async def has_event(self, event_id: str) -> bool:
        """Tell whether the change log holds the event ``event_id``."""
        return bool(await self.client.xrange(self.keys.events, event_id, event_id, count=1))

    async def group_step(
        self,
        group: str,
        member: str,
        claim_idle_ms: int,
        ack: str | None,
        start: str,
        path: str,
        active_ms: int,
        *,
        joined: bool = False,
        own_first: bool = False,
    ) -> GroupStep:
        """Acknowledge ``ack``, then claim or read one event for ``member`` (`_GROUP_STEP_LUA`).

        ``start`` is where the group starts if it must be created (``"0"``: the oldest event
        retained), unless the member ``joined`` it before (it has read): then a group gone
        is reported ("removed"), not made again. ``path`` is what the member watches: a step
        of kind "path" refused it, since another member, one that stepped within
        ``active_ms``, watches another.
        """
        keys = [self.keys.events, self.keys.trimmed, self.keys.group_paths]
        args = [group, member, str(claim_idle_ms), ack or "", start, path, str(active_ms)]
        args.append("1" if joined else "0")
        args.append("1" if own_first else "0")  # what its name held, first (a restart)
        reply = await self._run(self._group_step, keys, args)
        kind = reply[0]
        if kind == "removed":
            return GroupStep(kind)
        if kind == "event":  # (its entry, 'own' or '', how many times handed out)
            event_id, flat = reply[1]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            event = event_from_fields(self.drive, event_id, fields, int(reply[3]))
            return GroupStep(kind, event=event, own=reply[2] == "own")
        if kind in ("none", "skipped"):
            return GroupStep(kind, last=reply[1])
        if kind == "expired":
            return GroupStep(kind, last=reply[1], trimmed=reply[2])
        if kind == "path":
            return GroupStep(kind, path=reply[1])
        return GroupStep(kind, lost=list(reply[1]), own=reply[-1] == "own")

    async def group_leave(self, group: str, member: str, ack: str | None) -> None:
        """Acknowledge ``ack`` and remove ``member`` from ``group`` if it holds no event."""
        args = [group, member, ack or "", str(IDLE_MEMBER_MS)]
        await self._run(self._group_leave, [self.keys.events], args)

    async def groups(self) -> list[GroupInfo]:
        """Return the drive's consumer groups, by name (`_GROUPS_LUA`)."""
        keys = [self.keys.events, self.keys.group_paths]
        found = []
        for name, kept_path, members, pending, last, lag, idle in await self._run_reading(
            self._groups, keys, []
        ):
            kind, _, folder = (kept_path or "r:").partition(":")
            found.append(
                GroupInfo(
                    name=name,
                    path=folder or ".",
                    recursive=kind != "d",
                    members=int(members),
                    pending=int(pending),
                    last_event_id=last,
                    lag=int(lag) if lag else None,
                    idle=None if int(idle) < 0 else int(idle) / 1000,
                )
            )
        return sorted(found, key=lambda group: group.name)

    async def remove_group(self, group: str, *, active_ms: int, force: bool) -> list[Any]:
        """Remove ``group`` (`_GROUP_REMOVE_LUA`); return the script's reply.

        Unless ``force``, refused ("busy") while a member holds an event or read within
        ``active_ms``.
        """
        keys = [self.keys.events, self.keys.group_paths]
        args = [group, str(active_ms), "1" if force else "0"]
        return cast(list[Any], await self._run(self._group_remove, keys, args))

    async def denied_commands(self) -> set[str]:
        """Return the commands on this drive's keys the server's ACL denies its user.

        Empty where all are allowed, or the server cannot tell (before Redis 7). Raises
        redis-py's `NoPermissionError` if the user may not run scripts at all. (`WRITES`
        are those that change the drive.) Sets `read_only_scripts` where the server has
        them: the check itself is one.
        """
        k = self.keys
        keys = [k.entry("x"), k.children(""), k.files, k.lock("c", "x"), k.events, k.group_paths]
        denied: set[str]
        try:
            denied = set(await self.client.eval_ro(_DENIED_LUA, len(keys), *keys))
        except redis.exceptions.ResponseError as exc:
            text = str(exc).lower()
            if "unknown command" not in text and "no permissions" not in text:
                raise
            # Before Redis 7, or a user allowed EVAL and EVALSHA by name only.
            denied = set(await self.client.eval(_DENIED_LUA, len(keys), *keys))
            denied.add("EVALSHA_RO")
        # Scripts that only read run as EVALSHA, as all did, where EVALSHA_RO is denied.
        self.read_only_scripts = "EVALSHA_RO" not in denied
        denied.discard("EVALSHA_RO")
        return denied

    async def last_event_id(self) -> str:
        """Return the id of the newest event ever added (``"0-0"``: none)."""
        try:
            info: Any = await self.client.xinfo_stream(self.keys.events)
        except redis.exceptions.ResponseError:  # no such key: no event yet
            return "0-0"
        return str(info["last-generated-id"])

    async def trimmed(self) -> str:
        """Return the id of the newest event trimmed from the log (``"0-0"``: none)."""
        (value,) = await self._pipelined([("GET", self.keys.trimmed)])
        return str(value or "0-0")

    # -- atomic updates ----------------------------------------------------------------------

    async def check_put(
        self, component: str, path: str, allow_duplicates: bool, precondition: str = ""
    ) -> PutOutcome:
        """Check that ``component`` may put file ``path``; ``detail`` is the current version.

        ``precondition`` is ``""`` (none), ``"absent"`` (the component has no copy yet) or
        the version the component's copy must have.
        """
        return await self._run_put(
            self._put_call(component, path, "check", allow_duplicates, 0, 0, 0.0, "", precondition)
        )

    async def lock_put(
        self,
        component: str,
        path: str,
        allow_duplicates: bool,
        precondition: str,
        *,
        ttl: float,
        timeout: float,
    ) -> tuple[str, PutOutcome]:
        """Check as `check_put` does and, if the put may go on, take its commit lock.

        One round trip when nobody else commits the path. Returns the lock's token (empty
        if the check refused: then no lock is held) and the outcome. Commits are short (a
        rename and one Lua call), so a held lock is retried with a growing pause; raises
        TimeoutError when ``timeout`` passes first.
        """
        token = secrets.token_hex(8)
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            async with self._released_if_cut_short(component, [(path, token)]):
                outcome = await self._run_put(self._put_call(
                    component, path, "lock", allow_duplicates, 0, 0, 0.0, "", precondition,
                    token=token, lease_ms=int(ttl * 1000),
                ))  # fmt: skip
            if outcome.status != "locked":
                return (token if outcome.status == "ok" else ""), outcome
            if time.monotonic() >= deadline:
                raise TimeoutError(self.keys.lock(component, path))
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def lock_put_many(
        self,
        component: str,
        paths: Sequence[str],
        allow_duplicates: bool,
        precondition: str,
        *,
        ttl: float,
    ) -> list[tuple[str, PutOutcome]]:
        """Ask once for the commit lock of each path, in one round trip (no retry).

        Each answer is as `lock_put`'s, except that a lock held by another writer is
        reported (status ``locked``), not waited for: ask for it again with `lock_put`.
        """
        tokens = [secrets.token_hex(8) for _ in paths]
        lease_ms = int(ttl * 1000)
        calls = [
            self._put_call(component, path, "lock", allow_duplicates, 0, 0, 0.0, "",
                           precondition, token=token, lease_ms=lease_ms)
            for path, token in zip(paths, tokens, strict=True)
        ]  # fmt: skip
        async with self._released_if_cut_short(component, list(zip(paths, tokens, strict=True))):
            outcomes = await self._run_put_many(calls)
        return [
            (token if outcome.status == "ok" else "", outcome)
            for token, outcome in zip(tokens, outcomes, strict=True)
        ]

    async def commit_put_many(
        self,
        component: str,
        allow_duplicates: bool,
        precondition: str,
        commits: Sequence[tuple[str, int, int, float, str, str]],
    ) -> list[PutOutcome]:
        """Run `commit_put` for each (path, expected version, size, mtime, checksum, token).

        In one round trip where a `Wire` is; each commit is atomic on its own.
        """
        calls = [
            self._put_call(component, path, "commit", allow_duplicates, expected, size, mtime,
                           checksum, precondition, token=token)
            for path, expected, size, mtime, checksum, token in commits
        ]  # fmt: skip
        return await self._run_put_many(calls)

    async def commit_put(
        self,
        component: str,
        path: str,
        allow_duplicates: bool,
        expected_version: int,
        size: int,
        mtime: float,
        checksum: str,
        precondition: str,
        token: str | None,
    ) -> PutOutcome:
        """Record a new version of ``path``, append its event and publish a wake-up, atomically.

        Refuses (``status != "ok"``) if the folder structure, ownership or ``precondition``
        forbids it, or if the version is no longer ``expected_version``. On success the
        commit lock (``token``) is released in the same step; on a refusal it is kept.
        ``token=None``: the put took no lock (a new file, see `Drive._create`), and is
        refused with ``locked`` if another writer holds it now.
        """
        return await self._run_put(self._put_call(
            component, path, "commit" if token is not None else "create", allow_duplicates,
            expected_version, size, mtime, checksum, precondition, token=token or "",
        ))  # fmt: skip

    async def _run_put(self, call: tuple[list[str], list[str], list[str]]) -> PutOutcome:
        """Run the put script once (`_put_call`)."""
        (outcome,) = await self._run_put_many([call])
        return outcome

    async def _run_put_many(
        self, calls: Sequence[tuple[list[str], list[str], list[str]]]
    ) -> list[PutOutcome]:
        """Run the put script once per call (`_put_call`), pipelined where a `Wire` is."""
        replies = await self._run_many(self._put, [(keys, args) for keys, args, _ in calls])
        return [
            await self._put_outcome(reply, folders)
            for reply, (_, _, folders) in zip(replies, calls, strict=True)
        ]

    async def _run_many(
        self, script: AsyncScript, calls: Sequence[tuple[list[str], list[str]]]
    ) -> list[Any]:
        """Run ``script`` once per (KEYS, ARGV), in one round trip where a `Wire` is.

        Each call is atomic on its own, not with the others. Replies come in order.
        """
        if self.wire is None or len(calls) <= 1:
            return [await self._run(script, keys, args) for keys, args in calls]
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await self.wire.call_many(commands, raise_errors=False)
        for number, (keys, args) in enumerate(calls):
            if isinstance(replies[number], redis.exceptions.NoScriptError):
                # A restarted or flushed server: this one did not run (nor, most likely,
                # those after it); running it alone sends the script's source.
                replies[number] = await self.wire.run_script(script, keys, args)
            else:
                self.wire.checked(replies[number])
        return replies

    def _put_call(
        self,
        component: str,
        path: str,
        mode: str,
        allow_duplicates: bool,
        expected_version: int,
        size: int,
        mtime: float,
        checksum: str,
        precondition: str,
        *,
        token: str = "",
        lease_ms: int = 0,
    ) -> tuple[list[str], list[str], list[str]]:
        """Return the KEYS and ARGV of one call of the put script, and the path's folders."""
        folders = parent_dirs(path)
        keys = [
            *self._event_keys,
            self.keys.entry(path),
            self.keys.versions,
            self.keys.files,
            self.keys.component_files(component),
            self.keys.children(path),
            *(self.keys.children(f) for f in folders),
            *(self.keys.component_children(component, f) for f in folders),
            *(self.keys.entry(f) for f in folders[1:]),
            self.keys.lock(component, path),
        ]
        args = [
            *self._event_args,
            component,
            path,
            mode,
            "1" if allow_duplicates else "0",
            str(expected_version),
            str(size),
            repr(mtime),
            checksum,
            precondition,
            str(len(folders)),
            *path.split("/"),
            "1" if self.seen_index else "0",
            token,
            str(lease_ms),
        ]
        return keys, args, folders

    async def _put_outcome(self, reply: list[str], folders: list[str]) -> PutOutcome:
        status = reply[0]
        if status == "notadir":
            # Name the first ancestor that is a file, for the error message.
            blocking = await self._first_file_ancestor(folders[1:])
            return PutOutcome("notadir", blocking)
        if status == "ok":
            if len(reply) > 2:  # committed: the index exists from now on
                self.seen_index = True
            return PutOutcome("ok", reply[1], reply[2] if len(reply) > 2 else "")
        return PutOutcome(status, reply[1] if len(reply) > 1 else "")

    async def _first_file_ancestor(self, folders: Sequence[str]) -> str:
        found = await self._pipelined([("EXISTS", self.keys.entry(f)) for f in folders])
        return next((f for f, hit in zip(folders, found, strict=True) if hit), "")

    async def commit_delete(self, component: str, path: str) -> tuple[bool, list[str], int]:
        """Remove ``component``'s copy of ``path``.

        Returns (done, the other owners if not done, the version removed if done).
        """
        (outcome,) = await self.commit_delete_many(component, [path])
        return outcome

    async def commit_delete_many(
        self, component: str, paths: Sequence[str]
    ) -> list[tuple[bool, list[str], int]]:
        """`commit_delete` of each path, in one round trip where a `Wire` is."""
        calls = []
        for path in paths:
            folders = parent_dirs(path)
            keys = [
                *self._event_keys,
                self.keys.entry(path),
                self.keys.files,
                self.keys.component_files(component),
                *(self.keys.children(f) for f in folders),
                *(self.keys.component_children(component, f) for f in folders),
            ]
            args = [*self._event_args, component, path, str(len(folders)), *path.split("/")]
            calls.append((keys, args))
        return [
            (False, sorted(reply[1:]), 0) if reply[0] == "missing" else (True, [], int(reply[2]))
            for reply in await self._run_many(self._delete, calls)
        ]

    # -- whole-drive maintenance ----------------------------------------------------------

    async def ping(self) -> None:
        """Make one round trip to the drive's server (raises if it does not answer)."""
        if self.wire is None:
            await self.client.ping()
        else:
            await self.wire.call("PING")

    async def is_indexed(self) -> bool:
        """Tell whether the drive has an index (its version counters exist once a file was put)."""
        if self.wire is None:
            indexed = bool(await self.client.exists(self.keys.versions))
        else:  # (pipelined: the misses of many concurrent calls take no connection each)
            indexed = bool(await self.wire.call("EXISTS", self.keys.versions))
        self.seen_index = self.seen_index or indexed
        return indexed

    async def all_entries(self) -> AsyncGenerator[list[FileInfo], None]:
        """Yield every (component, file) entry of the index, those of 1,000 paths at a time."""
        paths: Any = await self.client.zrange(self.keys.files, 0, -1)
        for start in range(0, len(paths), _BULK):
            chunk = paths[start : start + _BULK]
            yield [info for owners in await self.owners_many(chunk) for info in owners.values()]

    async def replace_all(self, files: Sequence[DiskFile]) -> None:
        """Replace the drive's whole index by ``files`` (the change log is kept).

        The version counters go first and are written last: until they are, the index
        counts as lost, so an interrupted rebuild is detected (never a half-deleted index
        taken for whole, whose files gc would take for orphans) and can be run again.
        Meanwhile they are kept aside (those of deleted paths are on no disk), for a rerun.
        """
        versions_kept = self.keys.versions + ":kept"
        keep = {self.keys.events, self.keys.trimmed, self.keys.group_paths, versions_kept}
        # (SCAN walks every key of the server, the drive's or not: 1,000 a round trip, not
        # its default 10, which took ~8,000 round trips for a server of 100,000 keys.)
        pattern = _glob_escape(self.keys.prefix) + "*"
        doomed = [k async for k in self.client.scan_iter(match=pattern, count=_SCAN_COUNT)]
        versions: dict[str, int] = {}
        for key in (versions_kept, self.keys.versions):  # (kept: of a rebuild cut short)
            counted: dict[str, str] = await self.client.hgetall(key)  # type: ignore[assignment]
            for name, value in counted.items():
                versions[name] = max(versions.get(name, 0), int(value))
        if versions:
            await self.client.hset(versions_kept, mapping=versions)  # type: ignore[arg-type]
        await self.client.delete(self.keys.versions)
        keep.add(self.keys.versions)  # (gone)
        locks = self.keys.prefix + "lock:"  # (not an entry of a path holding ':lock:')
        doomed = [k for k in doomed if k not in keep and not k.startswith(locks)]
        for start in range(0, len(doomed), 1000):
            await self.client.delete(*doomed[start : start + 1000])
        # Written in as few commands as the index allows: an entry a copy, and the sets and
        # counters each for many files at once (not a ZADD and an HINCRBY a file and
        # folder: ~9 commands a file, ~180 µs of redis-py's time, 18 s per 100,000 files).
        members: dict[str, list[str]] = {}  # sorted set: its paths
        counts: dict[str, dict[str, int]] = {}  # children counter: name: files under it
        for start in range(0, len(files), _BULK):
            entries: list[tuple[str, ...]] = []
            for f in files[start : start + _BULK]:
                record = f"{f.size}|{f.mtime!r}|{f.checksum}|{f.version}"
                entries.append(("HSET", self.keys.entry(f.path), f.component, record))
                members.setdefault(self.keys.files, []).append(f.path)
                members.setdefault(self.keys.component_files(f.component), []).append(f.path)
                names = f.path.split("/")
                for folder, name in zip(parent_dirs(f.path), names, strict=True):
                    for key in (
                        self.keys.children(folder),
                        self.keys.component_children(f.component, folder),
                    ):
                        tally = counts.setdefault(key, {})
                        tally[name] = tally.get(name, 0) + 1
                field = f"{f.component}:{f.path}"
                versions[field] = max(versions.get(field, 0), f.version)
            await self._pipelined(entries)
        bulk: list[tuple[str, ...]] = []
        for key, paths in members.items():
            for start in range(0, len(paths), _BULK):
                scored = [arg for path in paths[start : start + _BULK] for arg in ("0", path)]
                bulk.append(("ZADD", key, *scored))
        for key, tally in counts.items():
            pairs = list(tally.items())
            for start in range(0, len(pairs), _BULK):
                flat = [arg for n, c in pairs[start : start + _BULK] for arg in (n, str(c))]
                bulk.append(("HSET", key, *flat))
        for start in range(0, len(bulk), 100):  # (each of up to 1,000 members)
            await self._pipelined(bulk[start : start + 100])
        versions.setdefault("", 0)  # the counters must exist even for an empty drive
        mapping: Any = versions
        await self.client.hset(self.keys.versions, mapping=mapping)
        await self.client.delete(versions_kept)

    # -- locks -------------------------------------------------------------------------------

    async def lock(self, component: str, path: str, *, ttl: float, timeout: float) -> str:
        """Take the commit lock of ``component``'s ``path``; return its token.

        Commits are short (a rename and one Lua call), so contention is brief: retry with a
        growing pause. Raises TimeoutError when ``timeout`` passes first.
        """
        key = self.keys.lock(component, path)
        token = secrets.token_hex(8)
        lease_ms = int(ttl * 1000)
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            async with self._released_if_cut_short(component, [(path, token)]):
                # On the `Wire` where there is one, as the release if cut short: the server
                # then takes the lock before it runs the release. (On another connection,
                # a release sent after a cancelled request could run first, and the lock
                # stay until its lease ends: seen under load.)
                if self.wire is None:
                    taken = await self.client.set(key, token, nx=True, px=lease_ms)
                else:
                    taken = await self.wire.call("SET", key, token, "NX", "PX", lease_ms)
                if taken:
                    return token
            if time.monotonic() >= deadline:
                raise TimeoutError(key)
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def try_lock_many(
        self, component: str, paths: Sequence[str], *, ttl: float
    ) -> list[str | None]:
        """Try once to take the commit lock of each path: its token, or None if it is held.

        In one round trip where a `Wire` is; see `lock`.
        """
        tokens = [secrets.token_hex(8) for _ in paths]
        lease_ms = int(ttl * 1000)
        commands = [
            ("SET", self.keys.lock(component, path), token, "NX", "PX", lease_ms)
            for path, token in zip(paths, tokens, strict=True)
        ]
        async with self._released_if_cut_short(component, list(zip(paths, tokens, strict=True))):
            if self.wire is None:
                replies = []
                for _, key, token, _, _, _ in commands:
                    replies.append(await self.client.set(key, token, nx=True, px=lease_ms))
            else:
                replies = await self.wire.call_many(commands)
        return [token if reply else None for token, reply in zip(tokens, replies, strict=True)]

    @contextlib.asynccontextmanager
    async def _released_if_cut_short(
        self, component: str, locks: Sequence[tuple[str, str]]
    ) -> AsyncIterator[None]:
        """Release the (path, token) locks if the block asking for them is cancelled.

        A request cancelled once sent may have taken its lock all the same, which would
        then stand in every writer's way until its lease ends (`LOCK_TTL`, 30 s): let it
        go, whatever cancels the caller. The release matches the tokens, so it touches no
        lock of another writer. (Not after a connection error: the server may be out of
        reach, and the caller is not to wait for it twice; the lease ends such a lock.)

        On the `Wire`, the release follows the request on the same connection, so the
        server runs them in that order. Without one (a Cluster), redis-py sends them on
        connections of its own, and the request may come second: the release then leaves
        a placeholder for `CUT_SHORT_HOLD` where no lock is held, which the request finds.
        """
        try:
            yield
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if self.wire is not None:
                    await to_its_end(self.unlock_many(component, locks))
                else:
                    await to_its_end(self.release_cut_short(component, locks))
            raise
        except CONNECTION_LOST:  # taken or not: released once the server answers again
            self.unlock_later(component, locks)
            raise

    async def release_cut_short(self, component: str, locks: Sequence[tuple[str, str]]) -> None:
        """Release (path, token) locks whose requests were cut short, maybe still on their way.

        See `_released_if_cut_short`: a lock taken goes; where none is held, a placeholder
        stays for `CUT_SHORT_HOLD`, so a request that comes after takes nothing.
        """
        hold_ms = str(int(CUT_SHORT_HOLD * 1000))
        calls = [([self.keys.lock(component, path)], [token, hold_ms]) for path, token in locks]
        await self._run_many(self._unlock_cut_short, calls)

    async def unlock_many(self, component: str, locks: Sequence[tuple[str, str]]) -> None:
        """`unlock` each (path, token), in one round trip where a `Wire` is."""
        calls = [([self.keys.lock(component, path)], [token]) for path, token in locks]
        try:
            await self._run_many(self._unlock, calls)
        except CONNECTION_LOST:
            self.unlock_later(component, locks)
            raise
        except asyncio.CancelledError:
            self._cut_short(component, locks)
            raise

    def unlock_later(self, component: str, locks: Iterable[tuple[str, str]]) -> None:
        """Release (path, token) locks once the server answers again (`release_unreleased`).

        For a caller that knows it cannot be reached now: no round trip is tried.
        """
        self.unreleased.extend((component, path, token) for path, token in locks)

    async def unlock(self, component: str, path: str, token: str) -> None:
        """Release a lock taken by `lock`, unless it expired and someone else holds it now.

        One that cannot be released for a lost connection is kept in `unreleased`.
        """
        try:
            await self._run(self._unlock, [self.keys.lock(component, path)], [token])
        except CONNECTION_LOST:
            self.unreleased.append((component, path, token))
            raise
        except asyncio.CancelledError:
            self._cut_short(component, [(path, token)])
            raise

    def _cut_short(self, component: str, locks: Sequence[tuple[str, str]]) -> None:
        """Keep (path, token) locks whose release a cancellation cut short, maybe unsent.

        Released at the next call or the connection's close (see `release_unreleased`):
        the release matches the token, so one sent twice (the first went after all) takes
        nothing of another writer's.
        """
        self.unlock_later(component, locks)

    async def release_unreleased(self) -> None:
        """Release the locks a lost connection kept from being released (`unreleased`).

        A server that comes back from an outage with its data holds them again, and each
        would stand in the way of its path's writers (this drive's too) until its lease
        ends. Those that still cannot be released stay for the next try.
        """
        locks, self.unreleased = self.unreleased, []
        by_component: dict[str, list[tuple[str, str]]] = {}
        for component, path, token in locks:
            by_component.setdefault(component, []).append((path, token))
        pending = list(by_component.items())
        while pending:
            component, paths = pending.pop(0)
            try:
                await self.unlock_many(component, paths)
            except CONNECTION_LOST:
                pass  # (kept again by unlock_many)
            except Exception as exc:  # refused (a replica, loading): kept for the next try
                logger.debug("could not release locks yet (%s)", exc)
                self.unreleased.extend((component, path, token) for path, token in paths)
            except BaseException:  # cancelled (kept by unlock_many): the others kept too
                for component, paths in pending:
                    self.unlock_later(component, paths)
                raise

"""Lua scripts that make each read-modify-write-publish one atomic Redis step.

Info objects are merged field by field *as raw JSON text*: Redis's cjson
would round floats to 14 digits and turn ``[]`` into ``{}`` if it re-encoded
a stored object, so the scripts split the stored object into its top-level
fields and splice new raw values in, leaving every other byte as it was.
"""

from moi import keys
from moi.status import TERMINAL, Status

_TERMINAL_TABLE = ", ".join(f"[{s.value!r}] = true" for s in TERMINAL)

# Shared helpers: split a JSON object into ordered (key, raw value) fields.
_PRELUDE = """
local TERMINAL = {__TERMINAL__}
local QUEUED, FAILED, PENDING = '__QUEUED__', '__FAILED__', '__PENDING__'
local QUEUED_KEY, QUEUED_TASKS_KEY = '__QUEUED_KEY__', '__QUEUED_TASKS_KEY__'
local REAPED_KEY = '__REAPED_KEY__'

local function string_end(s, p)
  local i = p + 1
  while true do
    local c = string.find(s, '["\\\\]', i)
    if string.byte(s, c) == 92 then i = c + 2 else return c end
  end
end

local function is_space(b)
  return b == 32 or b == 9 or b == 10 or b == 13
end

-- Position of the ',' or '}' that ends the value starting at vs.
local function value_end(s, vs)
  local b = string.byte(s, vs)
  if b == 34 then return string.find(s, '[,}]', string_end(s, vs) + 1) end
  if b ~= 91 and b ~= 123 then return string.find(s, '[,}]', vs) end
  local depth, p = 0, vs
  while true do
    local c = string.find(s, '[%[%]{}",]', p)
    b = string.byte(s, c)
    if b == 34 then
      p = string_end(s, c) + 1
    elseif depth == 0 and (b == 44 or b == 125) then
      return c
    else
      if b == 91 or b == 123 then depth = depth + 1 elseif b ~= 44 then depth = depth - 1 end
      p = c + 1
    end
  end
end

-- Fields of a JSON object as {raw key, raw value}, in order, and key -> position.
-- Keys without escapes and strings without escapes (nearly all) take one match each.
local function split_object(s)
  local fields, index, n = {}, {}, 0
  local i = string.find(s, '{', 1, true) + 1
  while true do
    local _, _, key, vs = string.find(s, '^%s*"([^"\\\\]*)"%s*:%s*()', i)
    local raw_key
    if key then
      raw_key = '"' .. key .. '"'
    else
      local q = string.find(s, '["}]', i)
      if not q or string.byte(s, q) == 125 then return fields, index end
      local qe = string_end(s, q)
      raw_key = string.sub(s, q, qe)
      key = cjson.decode(raw_key)
      vs = string.find(s, '%S', string.find(s, ':', qe + 1, true) + 1)
    end
    local b, ve, c = string.byte(s, vs), nil, nil
    if b == 34 then
      local _, e = string.find(s, '^"[^"\\\\]*"', vs)
      ve = e or string_end(s, vs)
    elseif b == 91 or b == 123 then
      c = value_end(s, vs)
      ve = c - 1
      while is_space(string.byte(s, ve)) do ve = ve - 1 end
    else
      local _, e = string.find(s, '^[^,}%s]+', vs)
      ve = e
    end
    c = c or string.find(s, '[,}]', ve + 1)
    n = n + 1
    fields[n] = {raw_key, string.sub(s, vs, ve)}
    index[key] = n
    if string.byte(s, c) == 125 then return fields, index end
    i = c + 1
  end
end

local function field_value(fields, index, name)
  local n = index[name]
  if not n then return '' end
  local v = cjson.decode(fields[n][2])
  if type(v) ~= 'string' then return '' end
  return v
end

local function join(fields)
  local out = {}
  for n, f in ipairs(fields) do out[n] = f[1] .. ': ' .. f[2] end
  return '{' .. table.concat(out, ', ') .. '}'
end

local function splice(fields, index, args, start)
  for a = start, #args, 2 do
    local n = index[args[a]]
    if n then
      fields[n][2] = args[a + 1]
    else
      fields[#fields + 1] = {cjson.encode(args[a]), args[a + 1]}
      index[args[a]] = #fields
    end
  end
  return join(fields)
end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- The status among field/raw-JSON pairs args[start..], or nil.
local function new_status(args, start)
  for a = start, #args, 2 do
    if args[a] == 'status' then return cjson.decode(args[a + 1]) end
  end
  return nil
end

-- Forget the task bookkeeping of a job that left Queued.
local function unqueue(id)
  redis.call('ZREM', QUEUED_KEY, id)
  redis.call('HDEL', QUEUED_TASKS_KEY, id)
end
"""
for _name, _value in {
    "__TERMINAL__": _TERMINAL_TABLE,
    "__QUEUED__": Status.QUEUED.value,
    "__PENDING__": Status.PENDING.value,
    "__FAILED__": Status.FAILED.value,
    "__QUEUED_KEY__": keys.QUEUED,
    "__QUEUED_TASKS_KEY__": keys.QUEUED_TASKS,
    "__REAPED_KEY__": keys.REAPED,
}.items():
    _PRELUDE = _PRELUDE.replace(_name, _value)

#: Seconds the watchdog remembers a job it reaped: its engine's final write may come later.
REAPED_MEMORY = 86400

#: Merge fields into an info object and publish ``{"update": [id]}``.
#: KEYS: info, channel, leases.  ARGV: id, ttl, guard, lease_op, lease_ttl,
#: if_missing, then field/raw-JSON pairs.  guard is ``any``, ``live`` (not
#: finished), ``queued``, ``pending`` (a manager's job not submitted yet: its
#: one move to Queued) or ``final`` (not finished, or failed by the watchdog
#: for an expired lease: the engine's own outcome, written late, wins);
#: lease_op is ``add``, ``remove`` or ``''``; if_missing is the info object to
#: start from when the node has none yet (an engine may start a job before the
#: submitter's write lands), or ``''``.  A job leaving ``Queued`` loses its
#: task bookkeeping (:data:`moi.keys.QUEUED`) in the same step.
#: Returns ``{applied (0/1), status before}``; ``{-1, ''}`` for an unknown id.
_UPDATE_BODY = """
local id, ttl, guard, lease_op = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('GET', KEYS[1])
if not cur then
  if ARGV[6] == '' then return {-1, ''} end
  cur = ARGV[6]
end
local fields, index = split_object(cur)
local status = field_value(fields, index, 'status')
local reaped = guard == 'final' and status == FAILED and redis.call('ZSCORE', REAPED_KEY, id)
if (guard == 'queued' and status ~= QUEUED) or (guard == 'pending' and status ~= PENDING)
    or (guard == 'live' and TERMINAL[status])
    or (guard == 'final' and TERMINAL[status] and not reaped) then
  return {0, status}
end
redis.call('SET', KEYS[1], splice(fields, index, ARGV, 7), 'EX', ttl)
redis.call('PUBLISH', KEYS[2], cjson.encode({update = {id}}))
local after = new_status(ARGV, 7)
if status == QUEUED and after and after ~= QUEUED then unqueue(id) end
if reaped then redis.call('ZREM', REAPED_KEY, id) end
if lease_op == 'add' then
  redis.call('ZADD', KEYS[3], now() + tonumber(ARGV[5]), id)
elseif lease_op == 'remove' then
  redis.call('ZREM', KEYS[3], id)
end
__AFTER__
return {1, status}
"""
UPDATE = "redis.replicate_commands()\n" + _PRELUDE + _UPDATE_BODY.replace("__AFTER__", "")

#: :data:`UPDATE` ending a job that asked for the next jobs of its chain: when the
#: update applies, the next jobs' Queued info objects are written in the same step,
#: each added to its parent's children (``add`` published) with its Queued
#: bookkeeping (no msg_id yet: the engine adds it once the cluster has the task).
#: KEYS and ARGV as for UPDATE, plus a last ARGV: a JSON list of ``{id, info,
#: children, parent, channel, message, entry, since, index}`` (keys and raw values;
#: ``index`` is the parent's :func:`moi.keys.jobs_index`).
CHAIN = (
    "redis.replicate_commands()\n"
    + _PRELUDE
    + "local created = cjson.decode(table.remove(ARGV))\n"
    + _UPDATE_BODY.replace(
        "__AFTER__",
        """
for _, c in ipairs(created) do
  redis.call('SET', c.id, c.info, 'EX', ttl)
  redis.call('SADD', c.children, c.id)
  redis.call('EXPIRE', c.children, ttl)
  redis.call('EXPIRE', c.parent, ttl)
  redis.call('PUBLISH', c.channel, c.message)
  redis.call('ZADD', QUEUED_KEY, c.since, c.id)
  redis.call('HSET', QUEUED_TASKS_KEY, c.id, c.entry)
  redis.call('ZADD', c.index, c.since, c.id)
  redis.call('EXPIRE', c.index, ttl)
end
""",
    )
)

#: Record a chained job's task (msg_id) once handed over, if it is still Queued-tracked.
#: KEYS: queued, queued tasks.  ARGV: id, entry.
RECORD_TASK = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

#: Cancel a job: a queued or pending one ends ``Cancelled`` at once (a queued one
#: loses its task bookkeeping), a running one gets its cancel flag set for the engine to act on.
#: KEYS: info, channel, cancel flag.  ARGV: id, ttl, then field/raw pairs
#: written when cancelling a queued job.
#: Returns ``'cancelled'``, ``'requested'``, ``'finished:<status>'`` or ``'missing'``.
CANCEL = (
    _PRELUDE
    + """
local id, ttl = ARGV[1], ARGV[2]
local cur = redis.call('GET', KEYS[1])
if not cur then return 'missing' end
local fields, index = split_object(cur)
local status = field_value(fields, index, 'status')
if TERMINAL[status] then return 'finished:' .. status end
if status == QUEUED or status == PENDING then
  redis.call('SET', KEYS[1], splice(fields, index, ARGV, 3), 'EX', ttl)
  redis.call('PUBLISH', KEYS[2], cjson.encode({update = {id}}))
  unqueue(id)
  return 'cancelled'
end
redis.call('SET', KEYS[3], '1', 'EX', ttl)
return 'requested'
"""
)

#: Refresh a running job's lease; returns 1 when a cancel was asked for.
#: KEYS: leases, cancel flag.  ARGV: id, lease_ttl.
HEARTBEAT = (
    "redis.replicate_commands()\n"
    + _PRELUDE
    + """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now() + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('EXISTS', KEYS[2])
"""
)

#: Fail every job whose lease expired and publish it; returns their ids.
#: Each is remembered in :data:`moi.keys.REAPED` for ``REAPED_MEMORY`` seconds,
#: so its engine's own final write (``final`` guard of UPDATE) still lands.
#: KEYS: leases.  ARGV: ttl, channel suffix, then field/raw pairs to write.
REAP = (
    "redis.replicate_commands()\n"
    + _PRELUDE
    + """
local ttl, suffix = ARGV[1], ARGV[2]
local t = now()
redis.call('ZREMRANGEBYSCORE', REAPED_KEY, '-inf', t - __REAPED_MEMORY__)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t)
local reaped = {}
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local cur = redis.call('GET', id)
  if cur then
    local fields, index = split_object(cur)
    if not TERMINAL[field_value(fields, index, 'status')] then
      redis.call('SET', id, splice(fields, index, ARGV, 3), 'EX', ttl)
      redis.call('PUBLISH', id .. suffix, cjson.encode({update = {id}}))
      redis.call('ZADD', REAPED_KEY, t, id)
      reaped[#reaped + 1] = id
    end
  end
end
return reaped
""".replace("__REAPED_MEMORY__", str(REAPED_MEMORY))
)

#: Info objects of a node and all its descendants, breadth first, in one step.
#: Each level is read with MGET; only groups (and nodes without info) have
#: their children looked up.  A child whose info expired and that has no
#: children of its own is removed from its parent's set on the way (its id
#: would stay there forever otherwise).  KEYS: root id.  ARGV: children
#: suffix, node limit.
TREE = """
redis.replicate_commands()
local suffix, limit = ARGV[1], tonumber(ARGV[2])
local out, seen, level, parents = {}, {[KEYS[1]] = true}, {KEYS[1]}, {false}
while #level > 0 and #out < limit do
  local below, below_parents = {}, {}
  for first = 1, #level, 4000 do
    local last = math.min(first + 3999, #level)
    local infos = redis.call('MGET', unpack(level, first, last))
    for n = 1, last - first + 1 do
      local id, parent, info = level[first + n - 1], parents[first + n - 1], infos[n]
      if info and #out < limit then out[#out + 1] = info end
      -- a plain search: a false hit costs one empty SMEMBERS, and a group always hits
      if not info or string.find(info, '"group"', 1, true) then
        local children = redis.call('SMEMBERS', id .. suffix)
        if not info and #children == 0 and parent then
          redis.call('SREM', parent .. suffix, id)
        end
        for _, child in ipairs(children) do
          if not seen[child] then
            seen[child] = true
            below[#below + 1] = child
            below_parents[#below_parents + 1] = id
          end
        end
      end
    end
  end
  level, parents = below, below_parents
end
return out
"""

#: Remove a child from a group (and its creation indexes) and publish ``remove`` if it was there.
#: KEYS: children set, channel, jobs index, groups index.  ARGV: child id, message.
DETACH = """
local removed = redis.call('SREM', KEYS[1], ARGV[1])
if removed == 1 then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
if KEYS[3] then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return removed
"""

CHILDREN_SUFFIX = keys.children("")
PUBSUB_SUFFIX = keys.pubsub("")

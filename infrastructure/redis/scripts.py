"""The Lua scripts of the Redis slot view. Each runs atomically in Redis.

Every script touches the keys of ONE hash tag only, so each runs on a Redis
Cluster as on one server: APPLY, READ, SWAP and DROP the three keys of one
batch (``{batch_id}``), ADVANCE the tracking key alone.

APPLY is the twin of ``projections.slot_view.fold``: one event's changes and
the batch's version move together, or not at all. Return codes: 1 applied,
0 already applied (version guard: a re-delivered or replayed event changes
nothing), -1 version gap (nothing written).

ADVANCE moves the projection position forward after a page's batch writes
(docs/architecture.md "The read model's position"). Return codes: 1 moved,
0 not moved (already there or further), -2 the stored position is missing or
behind what the caller last wrote (Redis lost data, e.g. it was flushed;
nothing written).
"""

from __future__ import annotations

_CHUNK = """
local function each_chunk(list, fn)
  for i = 1, #list, 500 do fn({unpack(list, i, math.min(i + 499, #list))}) end
end
"""

# KEYS: summary, available_slots, assignments (one batch). ARGV: version, change (JSON).
APPLY = (
    _CHUNK
    + """
local version = tonumber(ARGV[1])
local have = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version > have + 1 then return -1 end
if version <= have then return 0 end
local c = cjson.decode(ARGV[2])
if have == 0 then
  redis.call('HSET', KEYS[1], 'status', 'awaiting_registration', 'expected', '0',
    'assigned', '0', 'available', '0', 'pending', '0', 'failed', '0', 'excess', '0')
end
for f, v in pairs(c.set_fields or {}) do redis.call('HSET', KEYS[1], f, v) end
for f, n in pairs(c.incr_fields or {}) do redis.call('HINCRBY', KEYS[1], f, n) end
if c.drain_pending and tonumber(redis.call('HGET', KEYS[1], 'pending')) > 0 then
  redis.call('HINCRBY', KEYS[1], 'pending', -1)
end
redis.call('HSET', KEYS[1], 'version', ARGV[1])
each_chunk(c.add_slots or {}, function(part) redis.call('SADD', KEYS[2], unpack(part)) end)
each_chunk(c.remove_slots or {}, function(part) redis.call('SREM', KEYS[2], unpack(part)) end)
for e, t in pairs(c.assign or {}) do redis.call('HSET', KEYS[3], e, t) end
return 1
"""
)

# KEYS: summary, available_slots, assignments. One consistent snapshot.
READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2]),
        redis.call('HGETALL', KEYS[3])}
"""

# KEYS[1] tracking; ARGV[1] notification id; ARGV[2] the position the caller last
# wrote ('' = none yet: no check).
ADVANCE = """
local cur = redis.call('GET', KEYS[1])
if ARGV[2] ~= '' and (not cur or tonumber(cur) < tonumber(ARGV[2])) then return -2 end
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# KEYS: live summary, slots, assignments, shadow summary, slots, assignments.
# ARGV[1] batch id, ARGV[2] '1' = replace even a newer live batch (the store lost
# its events: restored from an older backup). Otherwise swaps the shadow batch in
# unless the live one is newer (a running projector got there first).
SWAP = """
local sv = tonumber(redis.call('HGET', KEYS[4], 'version') or '0')
local lv = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if sv < lv and ARGV[2] ~= '1' then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  return 0
end
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i + 3]) == 1 then
    redis.call('RENAME', KEYS[i + 3], KEYS[i])
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""

# KEYS: summary, slots, assignments. ARGV: batch id, version seen.
# Drops a batch only if nothing was projected into it since it was seen.
DROP = """
local v = redis.call('HGET', KEYS[1], 'version')
if v and v ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""

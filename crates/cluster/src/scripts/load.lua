-- What a late joiner starts from, read atomically.
-- KEYS: seq, snapshots, valid, state, stream, generation.
-- ARGV: a fresh generation, stored only if the data has none (Redis started empty); the id of the
--   entry a reloading node stood at ('' for none).
-- Returns {head seq, head id, valid ("seq id") or false, state or false, snapshots (flat pairs),
--   generation, first entry's seq (0 when empty), seq of the entry at ARGV[2] or false}.
local function seq_of(entries)
  if #entries == 0 then return false end
  local fields = entries[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then return fields[i + 1] end
  end
  return false
end
local head = redis.call('GET', KEYS[1]) or '0'
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
local head_id = '0-0'
if #last > 0 then head_id = last[1][1] end
-- Written only when absent: a Redis at its memory limit, or read-only, refuses any write (even a
-- SET NX that would change nothing), and a node must still be able to load from it.
local generation = redis.call('GET', KEYS[6])
if not generation then
  generation = ARGV[1]
  redis.call('SET', KEYS[6], generation)
end
local first_seq = seq_of(redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', 1)) or '0'
local probe_seq = false
if ARGV[2] ~= '' then
  -- An id Redis cannot parse finds nothing (the node then counts its place as lost) rather than
  -- failing every load, and with it every retry.
  local found = redis.pcall('XRANGE', KEYS[5], ARGV[2], ARGV[2])
  if not found.err then probe_seq = seq_of(found) end
end
return {head, head_id, redis.call('GET', KEYS[3]) or false, redis.call('GET', KEYS[4]) or false,
  redis.call('HGETALL', KEYS[2]), generation, first_seq, probe_seq}

-- What a late joiner starts from, read atomically.
-- KEYS: seq, snapshots, valid, state, stream, generation.
-- ARGV: a fresh generation, kept only if the data has none (Redis started empty).
-- Returns {head seq, head id, valid ("seq id") or false, state or false, snapshots (flat pairs),
--   generation, first entry's seq (0 when empty)}.
local head = redis.call('GET', KEYS[1]) or '0'
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
local head_id = '0-0'
if #last > 0 then head_id = last[1][1] end
redis.call('SET', KEYS[6], ARGV[1], 'NX')
local first_seq = '0'
local first = redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', 1)
if #first > 0 then
  local fields = first[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then first_seq = fields[i + 1] break end
  end
end
return {head, head_id, redis.call('GET', KEYS[3]) or false, redis.call('GET', KEYS[4]) or false,
  redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[6]), first_seq}

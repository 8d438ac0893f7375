-- What a late joiner starts from, read atomically.
-- KEYS: seq, snapshots, valid, state, stream.
-- Returns {head seq, head id, valid ("seq id") or false, state or false, snapshots (flat pairs)}.
local head = redis.call('GET', KEYS[1]) or '0'
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
local head_id = '0-0'
if #last > 0 then head_id = last[1][1] end
return {head, head_id, redis.call('GET', KEYS[3]) or false, redis.call('GET', KEYS[4]) or false,
  redis.call('HGETALL', KEYS[2])}

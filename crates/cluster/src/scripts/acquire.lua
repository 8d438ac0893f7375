-- Takes the lease if nobody holds it, with a new fencing epoch.
-- KEYS: lease, epoch. ARGV: node id, lease in ms.
-- Returns {1, token, ttl_ms} when taken, {0, holder's token, its ttl_ms} when held.
local holder = redis.call('GET', KEYS[1])
if holder then
  return {0, holder, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
local token = epoch .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token, tonumber(ARGV[2])}

-- A new leader's first act: the stored books belong to the old session. Drops them and
-- returns their markets (to be announced stale). KEYS: lease, snapshots, valid. ARGV: token.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not held with this token')
end
local markets = redis.call('HKEYS', KEYS[2])
redis.call('DEL', KEYS[2], KEYS[3])
return markets

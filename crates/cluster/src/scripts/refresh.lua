-- Stores current books, valid through the stream position given, only for the lease holder.
-- KEYS: lease, snapshots, valid. ARGV: token, seq, id, then market, book pairs.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not held with this token')
end
local at = ARGV[2] .. ' ' .. ARGV[3]
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], at .. ' ' .. ARGV[i + 1])
end
redis.call('SET', KEYS[3], at)
return 1

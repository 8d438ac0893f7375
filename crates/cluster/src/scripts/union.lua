-- Every live node's wanted topics, merged; nodes past their expiry are forgotten.
-- KEYS: nodes. ARGV: now ms, the wanted-set key prefix. (The per-node keys are derived here:
-- this runs on one Redis, not a Redis Cluster.)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1)
if #nodes == 0 then return {} end
local keys = {}
for i, node in ipairs(nodes) do keys[i] = ARGV[2] .. node end
return redis.call('SUNION', unpack(keys))

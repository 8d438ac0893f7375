-- Replaces this node's wanted topics and keeps them alive for ttl ms.
-- KEYS: nodes (zset of node -> expiry ms), the node's set. ARGV: node, now ms, ttl ms, topics...
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 500 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return 1

-- Compare-and-extend. KEYS: lease. ARGV: token, lease in ms. Returns 1 if still ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0

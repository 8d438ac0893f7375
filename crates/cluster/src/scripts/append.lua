-- Appends a batch of events to the stream, only for the current lease holder (the fence).
-- KEYS: lease, stream, seq, snapshots, state.
-- ARGV: token, maxlen, epoch, n, then per entry: op, arg, nfields, fields (body last).
--   op "snap": arg is the market; its book snapshot (the body) is stored with the entry's seq/id.
--   op "stale": arg is markets joined by newlines; their stored snapshots are dropped.
--   op "state": arg is the upstream state; stored for late joiners.
-- Returns {last seq, last id} (an empty batch: the current seq, '').
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not held with this token')
end
-- A key of another type is refused here, before any write: a script's writes stay when a later
-- command fails, and half a batch would be written again by the leader's retry.
for _, key in ipairs({{KEYS[2], 'stream'}, {KEYS[4], 'hash'}}) do
  local kind = redis.call('TYPE', key[1]).ok
  if kind ~= 'none' and kind ~= key[2] then
    return redis.error_reply('WRONGTYPE ' .. key[1] .. ' holds a ' .. kind .. ', not a ' .. key[2])
  end
end
local maxlen, epoch, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local i = 5
local seq, id = tonumber(redis.call('GET', KEYS[3]) or 0), ''
for _ = 1, n do
  local op, arg, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  -- Counted only once added: a number without its entry is a hole readers take for a loss.
  local args = {'XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'n', seq + 1, 'e', epoch}
  for f = 0, nf - 1 do args[#args + 1] = ARGV[i + f] end
  id = redis.call(unpack(args))
  seq = seq + 1
  redis.call('SET', KEYS[3], seq)
  if op == 'snap' then
    redis.call('HSET', KEYS[4], arg, seq .. ' ' .. id .. ' ' .. ARGV[i + nf - 1])
  elseif op == 'stale' then
    for market in string.gmatch(arg, '[^\n]+') do redis.call('HDEL', KEYS[4], market) end
  elseif op == 'state' then
    redis.call('SET', KEYS[5], arg)
  end
  i = i + nf
end
return {seq, id}

-- Storage layout: docs/storage.md
-- promote_due: move retries whose time has come back onto the queue. Atomic, so
-- every worker may run it at once and each id still moves exactly once.
-- KEYS[1] retry schedule, KEYS[2] queue
-- ARGV: message prefix, now (ms), most to move
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('LPUSH', KEYS[2], id)
  redis.call('HSET', ARGV[1] .. id, 'status', 'queued', 'updated_at', ARGV[2])
end
return #due

-- Storage layout: docs/storage.md
-- promote_due: move retries whose time has come back onto the queue. Atomic, so
-- every worker may run it at once and each id still moves exactly once. A retry
-- whose message cannot be read is buried as corrupt instead.
-- KEYS[1] retry schedule, KEYS[2] queue, KEYS[3] dead letters
-- ARGV: message prefix, now (ms), most to move
local now = ARGV[2]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  local key = ARGV[1] .. id
  redis.call('ZREM', KEYS[1], id)
  local problem = message_problem(key)
  if problem then
    bury_corrupt(KEYS[3], key, id, problem, now)
  else
    redis.call('LPUSH', KEYS[2], id)
    redis.call('HSET', key, 'status', 'queued', 'updated_at', now)
  end
end
return #due

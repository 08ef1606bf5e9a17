-- Storage layout: docs/storage.md
-- ack: the main server took these messages. Drop each from the in-flight list,
-- record the success, free the body and let the status expire, in one step.
-- KEYS[1] in-flight list
-- ARGV: message prefix, now (ms), status ttl (s), ids...
local in_flight, prefix, now, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV do
  local id = ARGV[i]
  local key = prefix .. id
  redis.call('LREM', in_flight, -1, id)
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'status', 'delivered', 'delivered_at', now, 'updated_at', now)
    redis.call('HDEL', key, 'body', 'worker', 'next_attempt_at')
    redis.call('EXPIRE', key, ttl)
  end
end
return #ARGV - 3

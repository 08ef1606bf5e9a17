-- ack: the main server took the message. Drop it from the in-flight list, record
-- the success, free the body and let the status expire, in one step.
-- KEYS[1] in-flight list, KEYS[2] message hash
-- ARGV: id, now (ms), status ttl (s)
redis.call('LREM', KEYS[1], -1, ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'status', 'delivered', 'delivered_at', ARGV[2], 'updated_at', ARGV[2])
redis.call('HDEL', KEYS[2], 'body', 'worker', 'next_attempt_at')
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1

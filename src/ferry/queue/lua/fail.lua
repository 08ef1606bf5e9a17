-- Storage layout: docs/storage.md
-- fail: an attempt failed. Schedule the next one (due time given) or, with no
-- due time, bury the message in the dead-letter set. Only the worker that still
-- holds the id may move it: if the reaper took it back meanwhile, the message
-- is already queued elsewhere and moving it again would make two copies.
-- Only the holder of the worker's lease acts: a fenced-off worker's ids were given
-- back by the reaper, or will be.
-- KEYS[1] in-flight set, KEYS[2] retry schedule, KEYS[3] dead letters, KEYS[4] message hash,
-- KEYS[5] heartbeat, KEYS[6] queue-wide counters (`dead` += 1 when buried)
-- ARGV: id, now (ms), error, due (ms, '' to bury), lease holder
local id, now, error, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('GET', KEYS[5]) ~= ARGV[5] then return 0 end
if redis.call('ZREM', KEYS[1], id) == 0 then return 0 end
local problem = message_problem(KEYS[4])
if problem then
  bury_corrupt(KEYS[3], KEYS[4], id, problem, now)
  return 1
end
if redis.call('HGET', KEYS[4], 'status') == 'delivered' then return 0 end
if due ~= '' then
  redis.call('ZADD', KEYS[2], due, id)
  redis.call('HSET', KEYS[4], 'status', 'retrying', 'last_error', error, 'next_attempt_at', due, 'updated_at', now)
else
  redis.call('ZADD', KEYS[3], now, id)
  redis.call('HSET', KEYS[4], 'status', 'dead', 'last_error', error, 'updated_at', now)
  redis.call('HDEL', KEYS[4], 'next_attempt_at')
  redis.call('HINCRBY', KEYS[6], 'dead', 1)
end
redis.call('HDEL', KEYS[4], 'worker')
return 1

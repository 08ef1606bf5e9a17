-- Storage layout: docs/storage.md
-- ack: the main server took these messages. Record each success, free the body and
-- let the status expire, in one step.
-- Normally the id is in this worker's in-flight set. When it is not (the worker's
-- lease lapsed, the reaper gave it back, maybe another process now holds the lease
-- under the same worker id), the delivery still happened: it is recorded where the
-- message waits (queued: taken off the queue, found near its front where the reaper
-- put it; retrying: off the schedule; dead: out of the dead letters), so it is not
-- delivered again and no list keeps an id whose message says `delivered`. A message
-- that another worker is delivering now is left to it (a duplicate the main server
-- drops by id). A key that is no message hash is left as it is.
-- KEYS[1] in-flight set, KEYS[2] heartbeat, KEYS[3] queue, KEYS[4] retry schedule,
-- KEYS[5] dead letters, KEYS[6] queue-wide counters (`delivered` += recorded)
-- ARGV: message prefix, now (ms), status ttl (s), lease holder, ids...
-- Returns how many were recorded.
local in_flight, prefix, now, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local holds_lease = redis.call('GET', KEYS[2]) == ARGV[4]
local recorded = 0

local function settled_elsewhere(id, key)
  local status = redis.call('HGET', key, 'status') or 'queued' -- a queued message stores none
  if status == 'queued' then return redis.call('LREM', KEYS[3], -1, id) > 0 end
  if status == 'retrying' then return redis.call('ZREM', KEYS[4], id) > 0 end
  if status == 'dead' then return redis.call('ZREM', KEYS[5], id) > 0 end
  return false -- delivering (someone else's now), or delivered already
end

for i = 5, #ARGV do
  local id = ARGV[i]
  local key = prefix .. id
  if redis.call('TYPE', key)['ok'] == 'hash' then
    local mine = holds_lease and redis.call('ZREM', in_flight, id) > 0
    if mine or settled_elsewhere(id, key) then
      redis.call('HSET', key, 'status', 'delivered', 'delivered_at', now, 'updated_at', now)
      redis.call('HDEL', key, 'body', 'worker', 'next_attempt_at')
      redis.call('EXPIRE', key, ttl)
      recorded = recorded + 1
    end
  end
end
if recorded > 0 then redis.call('HINCRBY', KEYS[6], 'delivered', recorded) end
return recorded

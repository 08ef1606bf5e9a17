-- Storage layout: docs/storage.md
-- reap: give the in-flight messages of every worker whose lease (heartbeat key)
-- has expired back to the front of the queue. Each return counts against the
-- message; past `max returns` it is a poison pill that keeps killing workers,
-- and goes to the dead letters instead of looping forever. A message that cannot
-- be read is buried as corrupt.
-- Keys of other workers are built here from their ids: they all carry the
-- queue's hash tag, so they share its cluster slot.
-- At most `most` ids a call, so a worker that died holding thousands never holds
-- Redis for long: the caller calls again while the reply says there is more.
-- KEYS[1] worker registry, KEYS[2] queue, KEYS[3] dead letters, KEYS[4] queue-wide
-- counters (`dead` +1 a poison pill)
-- ARGV: message prefix, in-flight prefix, heartbeat prefix, max returns, now (ms), most
-- Returns {returned, buried, more (1: call again)}.
local registry, queue, dead = KEYS[1], KEYS[2], KEYS[3]
local prefix, in_flight_prefix, heartbeat_prefix = ARGV[1], ARGV[2], ARGV[3]
local max_returns, now, budget = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local returned, buried = 0, 0

for _, worker in ipairs(redis.call('SMEMBERS', registry)) do
  if redis.call('EXISTS', heartbeat_prefix .. worker) == 0 then
    local in_flight = in_flight_prefix .. worker
    -- Newest claim first, each pushed to the queue's front: the oldest ends up
    -- at the very front, so the queue keeps the original order.
    local newest = budget > 0 and redis.call('ZRANGE', in_flight, 0, budget - 1, 'REV') or {}
    for _, id in ipairs(newest) do
      redis.call('ZREM', in_flight, id)
      budget = budget - 1
      local key = prefix .. id
      local problem, status = message_problem(key)
      if problem then
        bury_corrupt(dead, key, id, problem, now)
        buried = buried + 1
      elseif status ~= 'delivered' then
        local returns = redis.call('HINCRBY', key, 'returns', 1)
        redis.call('HDEL', key, 'worker')
        if returns > max_returns then
          redis.call('ZADD', dead, now, id)
          redis.call('HSET', key, 'status', 'dead', 'updated_at', now, 'last_error',
            'poison pill: its worker died ' .. returns .. ' times while delivering it')
          redis.call('HDEL', key, 'next_attempt_at')
          redis.call('HINCRBY', KEYS[4], 'dead', 1)
          buried = buried + 1
        else
          redis.call('RPUSH', queue, id)
          redis.call('HSET', key, 'status', 'queued', 'updated_at', now)
          returned = returned + 1
        end
      end
    end
    if redis.call('EXISTS', in_flight) == 1 then return {returned, buried, 1} end
    redis.call('SREM', registry, worker)
  end
end
return {returned, buried, 0}

-- Storage layout: docs/storage.md
-- reap: give the in-flight messages of every worker whose lease (heartbeat key)
-- has expired back to the front of the queue. Each return counts against the
-- message; past `max returns` it is a poison pill that keeps killing workers,
-- and goes to the dead-letter list instead of looping forever.
-- Keys of other workers are built here from their ids: they all carry the
-- queue's hash tag, so they share its cluster slot.
-- KEYS[1] worker registry, KEYS[2] queue, KEYS[3] dead-letter list
-- ARGV: message prefix, in-flight prefix, heartbeat prefix, max returns, now (ms)
local registry, queue, dead = KEYS[1], KEYS[2], KEYS[3]
local prefix, in_flight_prefix, heartbeat_prefix = ARGV[1], ARGV[2], ARGV[3]
local max_returns, now = tonumber(ARGV[4]), ARGV[5]
local returned, buried = 0, 0

for _, worker in ipairs(redis.call('SMEMBERS', registry)) do
  if redis.call('EXISTS', heartbeat_prefix .. worker) == 0 then
    local in_flight = in_flight_prefix .. worker
    -- The newest claim first, each pushed onto the queue's front: the oldest
    -- ends up first in line, so the front keeps the original order.
    local id = redis.call('LPOP', in_flight)
    while id do
      local key = prefix .. id
      local status = redis.call('HGET', key, 'status')
      if status and status ~= 'delivered' then
        local returns = redis.call('HINCRBY', key, 'returns', 1)
        redis.call('HDEL', key, 'worker')
        if returns > max_returns then
          redis.call('LPUSH', dead, id)
          redis.call('HSET', key, 'status', 'dead', 'updated_at', now, 'last_error',
            'poison pill: its worker died ' .. returns .. ' times while delivering it')
          buried = buried + 1
        else
          redis.call('RPUSH', queue, id)
          redis.call('HSET', key, 'status', 'queued', 'updated_at', now)
          returned = returned + 1
        end
      end
      id = redis.call('LPOP', in_flight)
    end
    redis.call('SREM', registry, worker)
  end
end
return {returned, buried}

-- Storage layout: docs/storage.md
-- release: give back, to the front of the queue (these were next in line), what
-- a worker's in-flight list holds beyond the ids the worker says it holds. Not a
-- death: returns are not counted.
-- At shutdown the worker holds nothing and signs off. While it lives, this gives
-- back the strays of claims whose replies were lost (Redis died, or the connection
-- dropped, after the claim ran): under its live lease nobody else would.
-- KEYS[1] in-flight list, KEYS[2] queue, KEYS[3] heartbeat, KEYS[4] worker registry
-- ARGV: message prefix, now (ms), worker id, sign off ('1'/'0'), then every id held
local held = {}
for i = 5, #ARGV do held[ARGV[i]] = true end
local released = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if not held[id] then
    held[id] = true -- an id listed twice goes back once
    redis.call('LREM', KEYS[1], 0, id)
    local key = ARGV[1] .. id
    local status = redis.call('HGET', key, 'status')
    if status and status ~= 'delivered' then
      redis.call('RPUSH', KEYS[2], id)
      redis.call('HSET', key, 'status', 'queued', 'updated_at', ARGV[2])
      redis.call('HDEL', key, 'worker')
      released = released + 1
    end
  end
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[4], ARGV[3])
end
return released

-- release: a worker shutting down gives back what it still holds, to the front
-- of the queue (these were next in line), and signs off. Not a death: returns
-- are not counted.
-- KEYS[1] in-flight list, KEYS[2] queue, KEYS[3] heartbeat, KEYS[4] worker registry
-- ARGV: message prefix, now (ms), worker id
local released = 0
local id = redis.call('LPOP', KEYS[1])
while id do
  local key = ARGV[1] .. id
  local status = redis.call('HGET', key, 'status')
  if status and status ~= 'delivered' then
    redis.call('RPUSH', KEYS[2], id)
    redis.call('HSET', key, 'status', 'queued', 'updated_at', ARGV[2])
    redis.call('HDEL', key, 'worker')
    released = released + 1
  end
  id = redis.call('LPOP', KEYS[1])
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[3])
return released

-- return_strays: give back, to the front of the queue, the ids in a worker's
-- in-flight list that the worker does not know it holds. A claim whose reply was
-- lost (Redis died, or the connection dropped, after the script ran) leaves them
-- there, and under the worker's live lease nobody else would ever return them.
-- Not a death: returns are not counted.
-- KEYS[1] in-flight list, KEYS[2] queue
-- ARGV: message prefix, now (ms), then every id the worker holds
local held = {}
for i = 3, #ARGV do held[ARGV[i]] = true end
local returned = 0
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
      returned = returned + 1
    end
  end
end
return returned

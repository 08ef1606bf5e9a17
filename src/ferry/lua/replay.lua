-- replay: give dead letters a fresh start on the queue: attempts and returns
-- reset, so the retry policy applies anew.
-- KEYS[1] dead-letter list, KEYS[2] queue
-- ARGV: message prefix, now (ms), ids...
local replayed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('LREM', KEYS[1], 0, id) > 0 then
    redis.call('LPUSH', KEYS[2], id)
    redis.call('HSET', ARGV[1] .. id, 'status', 'queued', 'attempts', 0, 'returns', 0, 'updated_at', ARGV[2])
    replayed = replayed + 1
  end
end
return replayed

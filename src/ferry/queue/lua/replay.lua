-- Storage layout: docs/storage.md
-- replay: give dead letters a fresh start on the queue: attempts and returns
-- reset, so the retry policy applies anew. Atomic, so each dead letter is
-- either still dead or queued once, never both and never twice, even when two
-- operators replay at the same moment or a worker buries another meanwhile.
-- Either the ids given, or (oldest > 0) that many from the list's oldest end:
-- replaying everything goes chunk by chunk, each blocking Redis only briefly.
-- KEYS[1] dead-letter list, KEYS[2] queue
-- ARGV: message prefix, now (ms), oldest (0: the ids given), ids...
-- Returns: how many were replayed, then each id given that was not a dead letter.
local dead, queue, prefix, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local oldest = tonumber(ARGV[3])
local reply = {0}

local function requeue(id)
  redis.call('LPUSH', queue, id)
  redis.call('HSET', prefix .. id, 'status', 'queued', 'attempts', 0, 'returns', 0, 'updated_at', now)
  reply[1] = reply[1] + 1
end

if oldest > 0 then
  -- The longest dead first: they leave the queue in the order they died.
  for _, id in ipairs(redis.call('RPOP', dead, oldest) or {}) do
    requeue(id)
  end
else
  for i = 4, #ARGV do
    if redis.call('LREM', dead, 0, ARGV[i]) > 0 then
      requeue(ARGV[i])
    else
      reply[#reply + 1] = ARGV[i]
    end
  end
end
return reply

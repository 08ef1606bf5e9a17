-- Storage layout: docs/storage.md
-- replay: give dead letters a fresh start on the queue: attempts and returns
-- reset, so the retry policy applies anew. Atomic, so each dead letter is
-- either still dead or queued once, never both and never twice, even when two
-- operators replay at the same moment or a worker buries another meanwhile.
-- Either the ids given, or (oldest > 0) that many from the oldest end: replaying
-- everything goes chunk by chunk, each blocking Redis only briefly. The dead
-- letters are a sorted set, so each id costs O(log n), however many there are.
-- KEYS[1] dead letters, KEYS[2] queue
-- ARGV: message prefix, now (ms), oldest (0: the ids given), ids...
-- Returns: how many were replayed, then each id given that was not a dead letter.
local dead, queue, prefix, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local oldest = tonumber(ARGV[3])

local function requeue(id)
  local key = prefix .. id
  redis.call('LPUSH', queue, id)
  -- A key that is no hash stays as it is: the claim buries it again, with the reason.
  if redis.call('TYPE', key)['ok'] == 'hash' then
    redis.call('HSET', key, 'status', 'queued', 'attempts', 0, 'returns', 0, 'updated_at', now)
  end
end

-- The longest dead first: they leave the queue in the order they died.
return each_dead_letter(dead, oldest, 4, requeue)

-- Storage layout: docs/storage.md
-- purge: delete dead letters for good. Each leaves the dead-letter list and
-- loses its message hash (body, status) in one step: no body is left behind
-- without its entry, and an id that is not dead (replayed meanwhile, or never
-- dead) keeps its hash, since only an id found in the list is deleted.
-- Message keys are built here from their ids: they carry the queue's hash tag,
-- so they share the list's cluster slot.
-- Either the ids given, or (oldest > 0) that many from the list's oldest end:
-- purging everything goes chunk by chunk, each blocking Redis only briefly.
-- KEYS[1] dead-letter list
-- ARGV: message prefix, oldest (0: the ids given), ids...
-- Returns: how many were purged, then each id given that was not a dead letter.
local dead, prefix = KEYS[1], ARGV[1]
local oldest = tonumber(ARGV[2])
local reply = {0}

if oldest > 0 then
  for _, id in ipairs(redis.call('RPOP', dead, oldest) or {}) do
    redis.call('DEL', prefix .. id)
    reply[1] = reply[1] + 1
  end
else
  for i = 3, #ARGV do
    if redis.call('LREM', dead, 0, ARGV[i]) > 0 then
      redis.call('DEL', prefix .. ARGV[i])
      reply[1] = reply[1] + 1
    else
      reply[#reply + 1] = ARGV[i]
    end
  end
end
return reply

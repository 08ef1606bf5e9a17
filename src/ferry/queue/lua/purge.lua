-- Storage layout: docs/storage.md
-- purge: delete dead letters for good. Each leaves the dead letters and loses
-- its message hash (body, status) in one step: no body is left behind without
-- its entry, and an id that is not dead (replayed meanwhile, or never dead)
-- keeps its hash, since only an id found among the dead letters is deleted.
-- Message keys are built here from their ids: they carry the queue's hash tag,
-- so they share the dead letters' cluster slot.
-- Either the ids given, or (oldest > 0) that many from the oldest end: purging
-- everything goes chunk by chunk, each blocking Redis only briefly; each id
-- costs O(log n) in the sorted set.
-- KEYS[1] dead letters
-- ARGV: message prefix, oldest (0: the ids given), ids...
-- Returns: how many were purged, then each id given that was not a dead letter.
local dead, prefix = KEYS[1], ARGV[1]
local oldest = tonumber(ARGV[2])
local function delete(id)
  -- With what a corrupt message's key held, if it was kept aside.
  redis.call('DEL', prefix .. id, prefix .. id .. ':corrupt')
end

return each_dead_letter(dead, oldest, 3, delete)

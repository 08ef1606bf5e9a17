-- Storage layout: docs/storage.md
-- release: give back, to the front of the queue (these were next in line), the ids
-- given that are still in this worker's in-flight set: at shutdown, everything it
-- holds; while it lives, the strays of claims whose replies were lost (Redis died, or
-- the connection dropped, after the claim ran): under its live lease nobody else
-- would. Not a death: returns are not counted. The caller reads the set a page at a
-- time and passes the ids to give back, newest first, so each call is O(k log n):
-- each id goes to the queue's front in turn, and the oldest ends up at the very front.
-- With `sign off`, and once the set is empty, the worker leaves the registry (the set
-- of ids and its entry).
-- Only for the holder of the lease, or for one whose lease expired before the reaper
-- came (as heartbeat.lua): a fenced-off worker touches nothing, above all not the
-- lease of whoever holds its worker id now.
-- KEYS[1] in-flight set, KEYS[2] queue, KEYS[3] heartbeat, KEYS[4] worker registry,
-- KEYS[5] dead letters, KEYS[6] this worker's registry entry
-- ARGV: message prefix, now (ms), worker id, sign off ('1'/'0'), lease holder, ids...
-- Returns how many were given back, or -1 when fenced off.
local in_flight, queue, now = KEYS[1], KEYS[2], ARGV[2]
local current = redis.call('GET', KEYS[3])
if current ~= ARGV[5] and (current or redis.call('SISMEMBER', KEYS[4], ARGV[3]) == 0) then
  return -1
end
local released = 0
for i = 6, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', in_flight, id) > 0 then -- settled meanwhile: nothing to give back
    local key = ARGV[1] .. id
    local problem, status = message_problem(key)
    if problem then
      bury_corrupt(KEYS[5], key, id, problem, now)
    elseif status ~= 'delivered' then
      redis.call('RPUSH', queue, id)
      redis.call('HSET', key, 'status', 'queued', 'updated_at', now)
      redis.call('HDEL', key, 'worker')
      released = released + 1
    end
  end
end
if ARGV[4] == '1' and redis.call('EXISTS', in_flight) == 0 then
  redis.call('DEL', KEYS[3], KEYS[6])
  redis.call('SREM', KEYS[4], ARGV[3])
end
return released

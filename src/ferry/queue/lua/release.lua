-- Storage layout: docs/storage.md
-- release: give back, to the front of the queue (these were next in line), what
-- a worker's in-flight list holds beyond the ids the worker says it holds. Not a
-- death: returns are not counted.
-- At shutdown the worker holds nothing and signs off. While it lives, this gives
-- back the strays of claims whose replies were lost (Redis died, or the connection
-- dropped, after the claim ran): under its live lease nobody else would.
-- O(n) in the list: it is read once and rebuilt with the ids still held, in order
-- (removing strays one LREM at a time was quadratic: 7.5 s for 20,000). At most
-- `most` strays go back a call; the rest stay for the next call, and the worker
-- signs off only once none is left.
-- Only for the holder of the lease, or for one whose lease expired before the reaper
-- came (as heartbeat.lua): a fenced-off worker touches nothing, above all not the
-- lease of whoever holds its worker id now.
-- KEYS[1] in-flight list, KEYS[2] queue, KEYS[3] heartbeat, KEYS[4] worker registry,
-- KEYS[5] dead letters
-- ARGV: message prefix, now (ms), worker id, sign off ('1'/'0'), lease holder, most,
-- then every id held
-- Returns {given back, strays left (call again while > 0)}, or {-1, 0} when fenced off.
local in_flight, queue, now = KEYS[1], KEYS[2], ARGV[2]
local current = redis.call('GET', KEYS[3])
if current ~= ARGV[5] and (current or redis.call('SISMEMBER', KEYS[4], ARGV[3]) == 0) then
  return {-1, 0}
end
local budget = tonumber(ARGV[6])
local held = {}
for i = 7, #ARGV do held[ARGV[i]] = true end
local ids = redis.call('LRANGE', in_flight, 0, -1)
redis.call('DEL', in_flight)
local kept, seen, released, left = {}, {}, 0, 0
-- Newest claim (the left end) first, each pushed to the queue's front: the oldest
-- ends up at the very front, so the queue keeps the original order.
for _, id in ipairs(ids) do
  if held[id] then
    kept[#kept + 1] = id
  elseif seen[id] then
    -- an id listed twice goes back once
  elseif budget <= 0 then
    seen[id] = true
    kept[#kept + 1] = id -- for the next call
    left = left + 1
  else
    seen[id] = true
    budget = budget - 1
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
for start = 1, #kept, 1000 do -- unpack takes a few thousand values at most
  redis.call('RPUSH', in_flight, unpack(kept, start, math.min(start + 999, #kept)))
end
if ARGV[4] == '1' and left == 0 then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[4], ARGV[3])
end
return {released, left}

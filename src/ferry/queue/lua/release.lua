-- Storage layout: docs/storage.md
-- release: give back, to the front of the queue (these were next in line), what
-- a worker's in-flight set holds beyond the ids the worker says it holds. Not a
-- death: returns are not counted.
-- At shutdown the worker holds nothing and signs off. While it lives, this gives
-- back the strays of claims whose replies were lost (Redis died, or the connection
-- dropped, after the claim ran): under its live lease nobody else would.
-- One page of the set a call, newest claim first: `start` counts the held ids
-- already passed over, so each call costs O(page + log n) and the caller calls
-- again with the `start` it answers until no page is left. Given back newest
-- first, each to the queue's front: the oldest ends up at the very front.
-- Only for the holder of the lease, or for one whose lease expired before the reaper
-- came (as heartbeat.lua): a fenced-off worker touches nothing, above all not the
-- lease of whoever holds its worker id now.
-- KEYS[1] in-flight set, KEYS[2] queue, KEYS[3] heartbeat, KEYS[4] worker registry,
-- KEYS[5] dead letters
-- ARGV: message prefix, now (ms), worker id, sign off ('1'/'0'), lease holder, page,
-- start, then every id held
-- Returns {given back, next start, more (1: call again)}, or {-1, 0, 0} when fenced off.
local in_flight, queue, now = KEYS[1], KEYS[2], ARGV[2]
local current = redis.call('GET', KEYS[3])
if current ~= ARGV[5] and (current or redis.call('SISMEMBER', KEYS[4], ARGV[3]) == 0) then
  return {-1, 0, 0}
end
local page, start = tonumber(ARGV[6]), tonumber(ARGV[7])
local held = {}
for i = 8, #ARGV do held[ARGV[i]] = true end
local ids = redis.call('ZRANGE', in_flight, start, start + page - 1, 'REV')
local released = 0
for _, id in ipairs(ids) do
  if held[id] then
    start = start + 1
  else
    redis.call('ZREM', in_flight, id)
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
local more = #ids == page and 1 or 0
if ARGV[4] == '1' and more == 0 then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[4], ARGV[3])
end
return {released, start, more}

-- Storage layout: docs/storage.md
-- claim: move up to `limit` ids from the queue into this worker's in-flight set
-- and load what delivering them needs, in one round trip. Only for the holder of
-- the worker's lease: a worker the reaper has fenced off claims nothing (its
-- in-flight set would hold ids nobody gives back). An id whose message cannot be
-- read is buried as corrupt, never delivered.
-- The in-flight set is scored by claim time (ms): an index by id for ack and fail,
-- and the claim order for the reaper.
-- The ids are popped and added to the in-flight set a batch a call (see
-- call_chunked), the set first, so that no id is ever in neither place; each message
-- is then read and marked with one call each.
-- KEYS[1] queue, KEYS[2] in-flight set of this worker, KEYS[3] dead letters,
-- KEYS[4] heartbeat of this worker
-- ARGV: message prefix, now (ms), limit, worker id, lease holder
-- Returns flat: id, body, content type, attempt, created_at (false: the id's time); per message; or
-- 'fenced' when this holder does not hold the lease.
local queue, in_flight, dead = KEYS[1], KEYS[2], KEYS[3]
local prefix, now, limit, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', KEYS[4]) ~= ARGV[5] then return 'fenced' end
-- Where message_problem's values hold each field (MESSAGE_FIELDS' order, the body last).
local CONTENT_TYPE, ATTEMPTS, CREATED_AT, BODY = 2, 3, 5, 7
local claimed = {}

local function hold(ids)
  local scored = {}
  for _, id in ipairs(ids) do
    scored[#scored + 1] = now
    scored[#scored + 1] = id
  end
  call_chunked('ZADD', in_flight, scored) -- CALL_CHUNK is even: no pair is split
end

local function take(id)
  local key = prefix .. id
  local problem, status, values = message_problem(key, true)
  if problem then
    redis.call('ZREM', in_flight, id)
    bury_corrupt(dead, key, id, problem, now)
    return
  end
  -- Delivered meanwhile (a copy handed back from a worker presumed dead): nothing to do.
  if status == 'delivered' then
    redis.call('ZREM', in_flight, id)
    return
  end
  local attempt = tonumber(values[ATTEMPTS]) + 1  -- a whole number: message_problem checked
  redis.call('HSET', key, 'status', 'delivering', 'attempts', attempt, 'updated_at', now, 'worker', worker)
  claimed[#claimed + 1] = id
  claimed[#claimed + 1] = values[BODY]
  claimed[#claimed + 1] = values[CONTENT_TYPE]
  claimed[#claimed + 1] = attempt
  claimed[#claimed + 1] = values[CREATED_AT]
end

if limit < 1 then return claimed end -- RPOP refuses a count below 1
local ids = redis.call('RPOP', queue, limit)
if not ids then return claimed end -- the queue is empty
hold(ids)
for _, id in ipairs(ids) do take(id) end
return claimed

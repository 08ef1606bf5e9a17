-- Storage layout: docs/storage.md
-- claim: move up to `limit` ids from the queue into this worker's in-flight set
-- and load what delivering them needs, in one round trip. Only for the holder of
-- the worker's lease: a worker the reaper has fenced off claims nothing (its
-- in-flight set would hold ids nobody gives back). An id whose message cannot be
-- read is buried as corrupt, never delivered.
-- The in-flight set is scored by claim time (ms): an index by id for ack and fail,
-- and the claim order for the reaper.
-- KEYS[1] queue, KEYS[2] in-flight set of this worker, KEYS[3] dead letters,
-- KEYS[4] heartbeat of this worker
-- ARGV: message prefix, now (ms), limit, worker id, lease holder
-- Returns flat: id, body, content type, attempt, created_at; per message; or
-- 'fenced' when this holder does not hold the lease.
local queue, in_flight, dead = KEYS[1], KEYS[2], KEYS[3]
local prefix, now, limit, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', KEYS[4]) ~= ARGV[5] then return 'fenced' end
local claimed = {}

local function take(id)
  local key = prefix .. id
  local problem = message_problem(key)
  if problem then
    bury_corrupt(dead, key, id, problem, now)
    return
  end
  local fields = redis.call('HMGET', key, 'body', 'content_type', 'created_at', 'status')
  -- Delivered meanwhile (a copy handed back from a worker presumed dead): nothing to do.
  if fields[4] == 'delivered' then return end
  redis.call('ZADD', in_flight, now, id)
  local attempt = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'status', 'delivering', 'updated_at', now, 'worker', worker)
  claimed[#claimed + 1] = id
  claimed[#claimed + 1] = fields[1]
  claimed[#claimed + 1] = fields[2]
  claimed[#claimed + 1] = attempt
  claimed[#claimed + 1] = fields[3]
end

for _ = 1, limit do
  local id = redis.call('RPOP', queue)
  if not id then break end
  take(id)
end
return claimed

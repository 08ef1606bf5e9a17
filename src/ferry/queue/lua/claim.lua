-- Storage layout: docs/storage.md
-- claim: move up to `limit` ids from the queue into this worker's in-flight list
-- and load what delivering them needs, in one round trip. Only for the holder of
-- the worker's lease: a worker the reaper has fenced off claims nothing (its
-- in-flight list would hold ids nobody gives back). An id whose message cannot be
-- read is buried as corrupt, never delivered.
-- KEYS[1] queue, KEYS[2] in-flight list of this worker, KEYS[3] dead letters,
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
    redis.call('LREM', in_flight, -1, id)
    bury_corrupt(dead, key, id, problem, now)
    return
  end
  local fields = redis.call('HMGET', key, 'body', 'content_type', 'created_at', 'status')
  -- Delivered meanwhile (a copy handed back from a worker presumed dead): nothing to do.
  if fields[4] == 'delivered' then
    redis.call('LREM', in_flight, -1, id)
    return
  end
  local attempt = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'status', 'delivering', 'updated_at', now, 'worker', worker)
  claimed[#claimed + 1] = id
  claimed[#claimed + 1] = fields[1]
  claimed[#claimed + 1] = fields[2]
  claimed[#claimed + 1] = attempt
  claimed[#claimed + 1] = fields[3]
end

for _ = 1, limit do
  local id = redis.call('LMOVE', queue, in_flight, 'RIGHT', 'LEFT')
  if not id then break end
  take(id)
end
return claimed

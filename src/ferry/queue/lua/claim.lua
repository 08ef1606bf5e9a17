-- Storage layout: docs/storage.md
-- claim: move up to `limit` ids from the queue into this worker's in-flight list
-- and load what delivering them needs, in one round trip. An id the worker
-- already moved with BLMOVE (its wait on an empty queue) comes first.
-- KEYS[1] queue, KEYS[2] in-flight list of this worker
-- ARGV: message prefix, now (ms), limit, worker id, id moved already ('' for none)
-- Returns flat: id, body, content type, attempt, created_at; per message.
local queue, in_flight = KEYS[1], KEYS[2]
local prefix, now, limit, worker, moved = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local claimed = {}

local function take(id)
  local key = prefix .. id
  local fields = redis.call('HMGET', key, 'body', 'content_type', 'created_at', 'status')
  -- No body: the message was delivered meanwhile (a copy handed back from a
  -- worker presumed dead), or its hash is gone. Nothing to deliver.
  if not fields[1] or fields[4] == 'delivered' then
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

if moved ~= '' then
  take(moved)
  limit = limit - 1
end
for _ = 1, limit do
  local id = redis.call('LMOVE', queue, in_flight, 'RIGHT', 'LEFT')
  if not id then break end
  take(id)
end
return claimed

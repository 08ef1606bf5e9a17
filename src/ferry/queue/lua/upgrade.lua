-- Storage layout: docs/storage.md
-- upgrade: what ferry 0.1 kept as lists is sorted sets now, so that a move by id
-- costs O(log n), never a scan: the dead letters (`{message_queue}:dead`, now
-- `:dead_letters`, scored by when each died) and each worker's in-flight list
-- (`:inflight:<worker>`, scored by claim order). Moves a chunk a call, the oldest
-- first; the caller calls again until it answers 0. Run before anything else
-- touches the queue, with no ferry 0.1 process left running.
-- KEYS[1] the old dead-letter list, KEYS[2] dead letters, KEYS[3] worker registry
-- ARGV: message prefix, now (ms), most to move, in-flight prefix
-- Returns {ids moved, ids the old lists still hold}.
local prefix, now, budget, in_flight_prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local left, moved_in_all = 0, 0

if redis.call('TYPE', KEYS[1])['ok'] == 'list' then
  for _, id in ipairs(redis.call('RPOP', KEYS[1], budget) or {}) do
    local key = prefix .. id
    local died = redis.call('TYPE', key)['ok'] == 'hash' and tonumber(redis.call('HGET', key, 'updated_at'))
    redis.call('ZADD', KEYS[2], died or now, id)
    budget = budget - 1
    moved_in_all = moved_in_all + 1
  end
  left = left + redis.call('LLEN', KEYS[1])
end

for _, worker in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local old = in_flight_prefix .. worker
  if redis.call('TYPE', old)['ok'] == 'list' then
    local moved = {}
    if budget > 0 then moved = redis.call('RPOP', old, budget) or {} end
    local after = redis.call('LLEN', old)
    -- The oldest claim (the list's right end) comes out first and scores lowest.
    local members = {}
    for i, id in ipairs(moved) do
      members[#members + 1] = now - after - (#moved - i)
      members[#members + 1] = id
    end
    budget = budget - #moved
    moved_in_all = moved_in_all + #moved
    local staged = old .. ':upgrading'
    if #members > 0 then redis.call('ZADD', staged, unpack(members)) end
    if after == 0 then
      redis.call('DEL', old)
      if redis.call('EXISTS', staged) == 1 then redis.call('RENAME', staged, old) end
    end
    left = left + after
  end
end
return {moved_in_all, left}

-- Storage layout: docs/storage.md
-- upgrade: until ferry 0.1, dead letters were a list at `{message_queue}:dead`;
-- they are a sorted set now, scored by when each died (so replay and purge by
-- id cost O(log n), not a scan of the list). This moves a chunk of the old list,
-- the longest dead first, into the set; run until it answers 0.
-- KEYS[1] the old list, KEYS[2] dead letters (sorted set)
-- ARGV: message prefix, now (ms), most to move
-- Returns how many the old list still holds.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'list' then return 0 end
for _, id in ipairs(redis.call('RPOP', KEYS[1], tonumber(ARGV[3])) or {}) do
  local key = ARGV[1] .. id
  local died = redis.call('TYPE', key)['ok'] == 'hash' and tonumber(redis.call('HGET', key, 'updated_at'))
  redis.call('ZADD', KEYS[2], died or tonumber(ARGV[2]), id)
end
return redis.call('LLEN', KEYS[1])

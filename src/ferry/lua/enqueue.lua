-- enqueue: store each message's hash and push its id, as one atomic step, so a
-- message is either wholly queued or not at all.
-- KEYS[1] queue
-- ARGV: message prefix, now (ms), queue cap (0: none), idempotency prefix,
--       idempotency ttl (s), all-or-nothing ('1'/'0'), then per message:
--       id, body, content type, idempotency key ('' for none)
-- Returns per message: outcome ('queued', 'existing' or 'full'), id.
local queue = KEYS[1]
local prefix, now, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local idempotency_prefix, idempotency_ttl = ARGV[4], ARGV[5]
local all_or_nothing = ARGV[6] == '1'
local count = (#ARGV - 6) / 4
local length = redis.call('LLEN', queue)

if all_or_nothing and cap > 0 and length + count > cap then
  local refused = {}
  for i = 0, count - 1 do
    refused[#refused + 1] = 'full'
    refused[#refused + 1] = ARGV[7 + 4 * i]
  end
  return refused
end

local results = {}
for i = 0, count - 1 do
  local id, body, content_type, idempotency = ARGV[7 + 4 * i], ARGV[8 + 4 * i], ARGV[9 + 4 * i], ARGV[10 + 4 * i]
  local existing = false
  if idempotency ~= '' then
    existing = redis.call('GET', idempotency_prefix .. idempotency)
  end
  if existing then
    results[#results + 1] = 'existing'
    results[#results + 1] = existing
  elseif cap > 0 and length >= cap then
    results[#results + 1] = 'full'
    results[#results + 1] = id
  else
    redis.call('HSET', prefix .. id, 'body', body, 'content_type', content_type, 'status', 'queued',
      'attempts', 0, 'returns', 0, 'created_at', now, 'updated_at', now)
    redis.call('LPUSH', queue, id)
    length = length + 1
    if idempotency ~= '' then
      redis.call('SET', idempotency_prefix .. idempotency, id, 'EX', idempotency_ttl)
    end
    results[#results + 1] = 'queued'
    results[#results + 1] = id
  end
end
return results

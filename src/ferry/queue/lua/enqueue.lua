-- Storage layout: docs/storage.md
-- enqueue: for each message, check its idempotency key, the queue's cap and its
-- API key's rate; then store its hash and push its id. One atomic step, so a
-- message is either wholly queued or not at all, and checks cannot race.
-- KEYS[1] queue, KEYS[2] queue-wide counters (`enqueued` += messages stored,
--   `answered_again` += messages answered from a copy stored earlier)
-- ARGV: message prefix, now (ms), queue cap (0: none), idempotency prefix,
--       idempotency ttl (s), all-or-nothing ('1'/'0'), rate bucket prefix,
--       rate (per s, 0: none), bucket capacity, then per message:
--       id, body, content type, idempotency key (''), rate bucket (''), sender ('')
-- An idempotency key is the sender's own (an API key's id): another sender's
-- `invoice-1001` is another key, so no client can suppress another's messages.
-- Returns per message an outcome, its detail and the message's status now:
--   'queued', id, 'queued' | 'existing', first id, its status ('' if gone) |
--   'full', '', '' | 'limited', wait (ms), ''
-- or, when every message was queued (the usual case), an empty list.
-- Idempotent per message id: a call the client retried after a timeout (the first
-- may have run) stores nothing twice, and refuses nothing it stored.
local FIELDS, FIRST = 6, 10
local queue = KEYS[1]
local prefix, now, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local idempotency_prefix, idempotency_ttl = ARGV[4], ARGV[5]
local all_or_nothing = ARGV[6] == '1'
local rate_prefix, rate, capacity = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local count = (#ARGV - FIRST + 1) / FIELDS
local length = redis.call('LLEN', queue)

-- Token bucket: take `cost` tokens, or say how many ms until there are enough.
local function take_tokens(bucket, cost)
  if rate <= 0 or bucket == '' then return 0 end
  local key = rate_prefix .. bucket
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate / 1000)
  if tokens < cost then
    return math.max(1, math.ceil((cost - tokens) * 1000 / rate))
  end
  redis.call('HSET', key, 'tokens', tokens - cost, 'at', now)
  redis.call('PEXPIRE', key, math.ceil(capacity * 1000 / rate) + 1000)
  return 0
end

local function refuse_all(outcome, detail)
  local refused = {}
  for _ = 1, count do
    refused[#refused + 1] = outcome
    refused[#refused + 1] = detail
    refused[#refused + 1] = ''
  end
  return refused
end

-- Stored already, by an earlier run of this very call.
local function stored(id)
  return redis.call('EXISTS', prefix .. id) == 1
end

local function status_of(id)
  local key = prefix .. id
  if redis.call('TYPE', key)['ok'] ~= 'hash' then return '' end
  return redis.call('HGET', key, 'status') or 'queued' -- a queued message stores none
end

-- A call that answers from a copy stored earlier (a call retried after a lost connection,
-- a resend of an Idempotency-Key) writes all the same: strict mode's WAITAOF, behind the
-- script on its connection, waits for that connection's own writes only, and a connection
-- that wrote nothing would have it confirm at once what no disk may hold yet.
local function answered_again(n)
  redis.call('HINCRBY', KEYS[2], 'answered_again', n)
end

if all_or_nothing then
  if stored(ARGV[FIRST]) then -- the batch is stored whole, or not at all
    answered_again(count)
    return {}
  end
  if cap > 0 and length + count > cap then return refuse_all('full', '') end
  local wait = take_tokens(ARGV[FIRST + 4], count)
  if wait > 0 then return refuse_all('limited', wait) end
end

local results = {}
local pushed = {} -- pushed at the end in one LPUSH, oldest first, as one LPUSH each would
local all_queued = true
local stored_now, stored_before = 0, 0
for i = 0, count - 1 do
  local base = FIRST + FIELDS * i
  local id, body, content_type = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local idempotency, bucket, sender = ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
  local idempotency_key = idempotency_prefix .. sender .. ':' .. idempotency
  local outcome, detail, status = 'queued', id, 'queued'
  local existing = idempotency ~= '' and redis.call('GET', idempotency_key)
  if existing == id or stored(id) then
    stored_before = stored_before + 1 -- by an earlier run of this call: nothing more to do
  elseif existing then
    outcome, detail, status = 'existing', existing, status_of(existing)
    stored_before = stored_before + 1
  elseif cap > 0 and length >= cap then
    outcome, detail, status = 'full', '', ''
  else
    local wait = all_or_nothing and 0 or take_tokens(bucket, 1)
    if wait > 0 then
      outcome, detail, status = 'limited', wait, ''
    else
      -- Fields at their defaults are not stored (_message.lua: FIELD_DEFAULTS).
      local key = prefix .. id
      redis.call('HSET', key, 'body', body, 'sender', sender)
      if content_type ~= DEFAULT_CONTENT_TYPE then redis.call('HSET', key, 'content_type', content_type) end
      pushed[#pushed + 1] = id
      length = length + 1
      stored_now = stored_now + 1
      if idempotency ~= '' then
        redis.call('SET', idempotency_key, id, 'EX', idempotency_ttl)
      end
    end
  end
  results[#results + 1] = outcome
  results[#results + 1] = detail
  results[#results + 1] = status
  all_queued = all_queued and outcome == 'queued'
end
if stored_now > 0 then
  call_chunked('LPUSH', queue, pushed)
  redis.call('HINCRBY', KEYS[2], 'enqueued', stored_now)
end
if stored_before > 0 then answered_again(stored_before) end
if all_queued then return {} end
return results

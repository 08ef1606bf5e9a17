-- Storage layout: docs/storage.md
-- Prepended to every script when it is loaded (ferry/queue/queue.py): how a script
-- reads a message hash without failing half way. Redis does not roll back a script
-- that fails, so a script looks at a message with `message_problem` before its
-- first write for it; a message it cannot read is buried with `bury_corrupt`, what
-- it held kept aside, instead of failing the script and stranding the ids it moved.
local MESSAGE_STATUSES = {queued = true, delivering = true, retrying = true, delivered = true, dead = true}
-- Every field a message has but the body (which goes once delivered, and is only
-- looked for: copying it into Lua would cost more than the rest of the check).
local MESSAGE_FIELDS = {'status', 'content_type', 'attempts', 'returns', 'created_at', 'updated_at'}
-- A field that holds its default is not stored (enqueue writes only the body, the
-- sender and a content type not at its default): the defaults alone were a tenth of a
-- queued message (docs/storage.md, "Memory"). A message hash with no `status` is
-- `queued`; with no `created_at`, it was made when its id says (a UUIDv7 starts with its
-- Unix time in ms: the Python side reads it, `id_time_ms`), and `updated_at` is
-- `created_at`.
local DEFAULT_CONTENT_TYPE = 'application/json'
local FIELD_DEFAULTS = {content_type = DEFAULT_CONTENT_TYPE, attempts = '0', returns = '0'}
-- The same and the body, last: for a script that sends the body on (claim), one read.
local MESSAGE_FIELDS_AND_BODY = {unpack(MESSAGE_FIELDS)}
MESSAGE_FIELDS_AND_BODY[#MESSAGE_FIELDS + 1] = 'body'
local COUNT_FIELDS = {attempts = true, returns = true, created_at = true, updated_at = true}
local CREATED_AT_SLOT = 5 -- created_at's place in MESSAGE_FIELDS: checked before updated_at's

-- Values one call takes at most: Lua's unpack can pass only so many (a few thousand).
local CALL_CHUNK = 1000

-- `command key value...` for all `values`, in as few calls as fit: a call costs Valkey
-- about as much as the work it does for one message (bench/script_instructions.py).
local function call_chunked(command, key, values)
  for first = 1, #values, CALL_CHUNK do
    redis.call(command, key, unpack(values, first, math.min(first + CALL_CHUNK - 1, #values)))
  end
end

local function shown(value)
  return string.format('%q', string.sub(value, 1, 40))
end

-- nil, the message's status and its fields' values (MESSAGE_FIELDS' order, a field not
-- stored given its default, the body last `with_body`) when the message at `key` can be
-- handled; else why not: 'gone' (no key at all), a key of another type, the body
-- missing, or a field not what ferry writes there.
local function message_problem(key, with_body)
  -- pcall: a key of another type answers an error here instead of ending the script
  -- (and the usual case costs one call, not a TYPE first).
  local values = redis.pcall('HMGET', key, unpack(with_body and MESSAGE_FIELDS_AND_BODY or MESSAGE_FIELDS))
  if values['err'] then return 'the key holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a hash' end
  local has_body = with_body and values[#MESSAGE_FIELDS_AND_BODY] ~= false
  local status = values[1]
  if not status then
    -- A queued message stores no status; a key that is not there is no message at all
    -- (a body read says the key is there without asking: claim's usual case).
    if not has_body and redis.call('EXISTS', key) == 0 then return 'gone' end
    status = 'queued'
  end
  if not MESSAGE_STATUSES[status] then return 'status is ' .. shown(status) end
  for i = 2, #MESSAGE_FIELDS do
    local name = MESSAGE_FIELDS[i]
    -- false, never nil, for a field with no value: claim's reply keeps its places
    local value = values[i] or FIELD_DEFAULTS[name] or (name == 'updated_at' and values[CREATED_AT_SLOT])
    if value and COUNT_FIELDS[name] and not (#value <= 15 and string.match(value, '^%d+$')) then
      return name .. ' is not a whole number: ' .. shown(value)
    end
    values[i] = value
  end
  if status ~= 'delivered' then
    if not with_body then has_body = redis.call('HEXISTS', key, 'body') == 1 end
    if not has_body then return 'body is missing' end
  end
  return nil, status, values
end

-- Into the dead-letter set with the reason. Whatever the key held is copied first,
-- byte for byte, to `<key>:corrupt` (same hash tag, same slot); then the key is made
-- a readable dead letter: status, reason, and every count that was not one set to 0
-- (created_at to now; one not stored keeps its default; the body and content type
-- stay if they were there, so a replay after a repair can deliver it).
local function bury_corrupt(dead, key, id, problem, now)
  local reason = 'corrupt: ' .. problem
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' then
    redis.call('COPY', key, key .. ':corrupt', 'REPLACE')
    reason = reason .. '; as found at ' .. key .. ':corrupt'
    if kind ~= 'hash' then redis.call('DEL', key) end
  end
  for name in pairs(COUNT_FIELDS) do
    local value = redis.call('HGET', key, name)
    if value and not (string.match(value, '^%d+$') and #value <= 15) then
      redis.call('HSET', key, name, name == 'created_at' and now or 0)
    end
  end
  redis.call('HSET', key, 'status', 'dead', 'last_error', reason, 'updated_at', now)
  redis.call('ZADD', dead, now, id)
end

-- The dead letters a replay or purge acts on: the `oldest` longest dead (oldest > 0),
-- else each of ARGV[first..] that is one; `act(id)` for each, once it has left the set.
-- Returns the scripts' reply: how many, then each id given that was not a dead letter.
local function each_dead_letter(dead, oldest, first, act)
  local reply = {0}
  if oldest > 0 then
    local popped = redis.call('ZPOPMIN', dead, oldest)
    for i = 1, #popped, 2 do
      act(popped[i])
      reply[1] = reply[1] + 1
    end
    return reply
  end
  for i = first, #ARGV do
    if redis.call('ZREM', dead, ARGV[i]) > 0 then
      act(ARGV[i])
      reply[1] = reply[1] + 1
    else
      reply[#reply + 1] = ARGV[i]
    end
  end
  return reply
end

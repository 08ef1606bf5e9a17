-- Storage layout: docs/storage.md
-- heartbeat: renew this worker's lease, or take it. The lease is the fencing token:
-- the heartbeat key holds the holder (host, process, a random token of this run),
-- and claim, ack, fail and release act for a worker only while it holds the value.
-- Renewed only by its holder. Taken: at start (`take` '1', once any earlier holder
-- is gone), or again by a holder whose key expired before the reaper came (its
-- worker id is still registered, so nothing it held was given back). A holder that
-- the reaper has fenced off (its id no longer registered) is refused: it must start
-- over with a new token.
-- With field/value pairs, the holder also writes its registry entry (what `ferry
-- workers list` shows), stamped with Redis's clock so that readers on other hosts
-- judge its age without clock skew; only the lease's holder writes it.
-- KEYS[1] heartbeat, KEYS[2] worker registry, KEYS[3] this worker's registry entry
-- ARGV: holder, lease (ms), worker id, take ('1'/'0'), entry ttl (ms), field, value...
-- Returns 1 when this holder holds the lease, 0 when it is fenced off.
local current = redis.call('GET', KEYS[1])
local registered = redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1
if current == ARGV[1] or ARGV[4] == '1' or (not current and registered) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
  if #ARGV > 5 then
    local time = redis.call('TIME')
    redis.call('HSET', KEYS[3], 'heartbeat_at', string.format('%d.%06d', time[1], time[2]), unpack(ARGV, 6))
    redis.call('PEXPIRE', KEYS[3], ARGV[5])
  end
  return 1
end
return 0

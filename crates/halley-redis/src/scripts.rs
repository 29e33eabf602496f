//! The Lua scripts that make each multi-key step atomic in Redis.
//!
//! Redis runs one script at a time, so the order in which `publish` scripts run *is* the id
//! order: the offset is taken, the message is stored in its channel's history and appended to
//! the fan-out log in one step that no other publish can interleave with.

use redis::Script;

/// Creates the epoch if there is none (first start, or Redis lost its data), and returns it
/// with the current offset. A new epoch starts with an empty registry: whatever is left of an
/// older one (keys named with their epoch expire by themselves) must not be listed or count
/// against `max_channels`.
///
/// Also starts a new epoch when Redis went back in time within the caller's epoch — its offset
/// is below one the caller already delivered (a failover to a replica that lacks the last
/// writes, a restore from an old snapshot) — since the same ids would otherwise be issued twice.
///
/// With a master given (`EpochRule::Master`), also when the epoch was begun on another server
/// (`master`, the `run_id` the caller read on this connection): whatever that server issued
/// after its last write that reached this one would be issued again. The check and the new
/// epoch are one step, so of several nodes reconnecting at once the first begins the epoch and
/// the others find it. The old epoch and its last offset here are kept (`prev`, `base`).
///
/// ARGV: key prefix, a fresh random epoch (hex), the master's run_id (empty: not checked),
/// optionally the caller's epoch (hex) and the last offset it delivered.
const ENSURE_EPOCH: &str = r"
local seq = ARGV[1] .. 'seq'
local v = redis.call('HMGET', seq, 'epoch', 'offset', 'master')
if (not v[1])
  or (ARGV[4] and v[1] == ARGV[4] and tonumber(v[2] or '0') < tonumber(ARGV[5]))
  or (ARGV[3] ~= '' and v[3] ~= ARGV[3]) then
  if v[1] then
    redis.call('HSET', seq, 'prev', v[1], 'base', v[2] or '0')
  end
  redis.call('HSET', seq, 'epoch', ARGV[2], 'offset', 0, 'forgotten', 0, 'master', ARGV[3])
  redis.call('DEL', ARGV[1] .. 'last', ARGV[1] .. 'expiry')
  v = redis.call('HMGET', seq, 'epoch', 'offset')
end
return {v[1], v[2]}
";

/// Publishes one message: the next offset, the channel's history (bounded by length, and by
/// age through the key's TTL and the replay-time filter), the channel registry, the fan-out
/// log. Keys carry the epoch in their names, so a new epoch never appends to an old stream.
///
/// Each history entry carries `e`, the highest offset this channel has lost so far (trimmed
/// by length, or the whole stream expired): a resume from below it has a gap.
///
/// ARGV: key prefix, channel, data, fresh epoch, history size, history ttl ms, max channels,
/// log length, origin (`<node hex>:<seq>`), the message's type (`k`; empty: none), its expiry
/// in Unix ms (`x`; 0: none), the master's run_id (empty: not checked; see `ENSURE_EPOCH`,
/// whose new epoch this begins too when the server changed). `k` and `x` are stored only when
/// given.
/// Log entries also carry `u`, the publish time in Unix µs (Redis's clock), where a node's
/// publish→write latency starts.
/// Returns `{epoch, offset}`, or 0 when the channel would exceed max channels.
const PUBLISH: &str = r"
local prefix, channel = ARGV[1], ARGV[2]
local maxlen, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local seq, last, expiry = prefix .. 'seq', prefix .. 'last', prefix .. 'expiry'
local cur = redis.call('HMGET', seq, 'epoch', 'offset', 'master')
if (not cur[1]) or (ARGV[12] ~= '' and cur[3] ~= ARGV[12]) then
  if cur[1] then
    redis.call('HSET', seq, 'prev', cur[1], 'base', cur[2] or '0')
  end
  redis.call('HSET', seq, 'epoch', ARGV[4], 'offset', 0, 'forgotten', 0, 'master', ARGV[12])
  redis.call('DEL', last, expiry)
end
local prev = redis.call('ZSCORE', last, channel)
if not prev and redis.call('ZCARD', last) >= tonumber(ARGV[7]) then
  return 0
end
local epoch = redis.call('HGET', seq, 'epoch')
local offset = redis.call('HINCRBY', seq, 'offset', 1)
local hist = prefix .. 'h:' .. epoch .. ':' .. channel
local log = prefix .. 'log:' .. epoch
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local evicted = 0
local newest = redis.call('XREVRANGE', hist, '+', '-', 'COUNT', 1)
if #newest > 0 then
  evicted = tonumber(newest[1][2][6])
  local len = redis.call('XLEN', hist)
  if len >= maxlen then
    local gone = redis.call('XRANGE', hist, '-', '+', 'COUNT', len - maxlen + 1)
    evicted = tonumber(string.sub(gone[#gone][1], 3))
  end
elseif prev then
  evicted = tonumber(prev)
end
local id = string.format('0-%d', offset)
local extra = {}
if ARGV[10] and ARGV[10] ~= '' then
  table.insert(extra, 'k')
  table.insert(extra, ARGV[10])
end
if ARGV[11] and ARGV[11] ~= '0' then
  table.insert(extra, 'x')
  table.insert(extra, ARGV[11])
end
redis.call('XADD', hist, 'MAXLEN', maxlen, id, 'd', ARGV[3], 't', string.format('%d', now),
  'e', string.format('%d', evicted), unpack(extra))
redis.call('PEXPIRE', hist, ttl)
redis.call('ZADD', last, offset, channel)
redis.call('ZADD', expiry, string.format('%d', now + ttl), channel)
redis.call('XADD', log, 'MAXLEN', '~', ARGV[8], id, 'c', channel, 'd', ARGV[3], 'o', ARGV[9],
  'u', string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])), unpack(extra))
redis.call('PEXPIRE', log, ttl)
return {epoch, offset}
";

/// Forgets channels whose history has expired: removes them from the registry and raises
/// `forgotten` (the highest offset a forgotten channel held), so that a resume from below it
/// is told of a gap. At most ARGV[2] channels per call.
///
/// ARGV: key prefix, batch size. Returns how many channels were forgotten.
const SWEEP: &str = r"
local prefix = ARGV[1]
local seq, last, expiry = prefix .. 'seq', prefix .. 'last', prefix .. 'expiry'
local epoch = redis.call('HGET', seq, 'epoch')
if not epoch then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', string.format('%d', now), 'LIMIT', 0,
  tonumber(ARGV[2]))
local forgotten = tonumber(redis.call('HGET', seq, 'forgotten') or '0')
for _, c in ipairs(gone) do
  local s = redis.call('ZSCORE', last, c)
  if s and tonumber(s) > forgotten then
    forgotten = tonumber(s)
  end
  redis.call('ZREM', last, c)
  redis.call('ZREM', expiry, c)
  redis.call('DEL', prefix .. 'h:' .. epoch .. ':' .. c)
end
if #gone > 0 then
  redis.call('HSET', seq, 'forgotten', string.format('%d', forgotten))
end
return #gone
";

pub(crate) struct Scripts {
    pub ensure_epoch: Script,
    pub publish: Script,
    pub sweep: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            ensure_epoch: Script::new(ENSURE_EPOCH),
            publish: Script::new(PUBLISH),
            sweep: Script::new(SWEEP),
        }
    }
}

-- sluice limits allocation.
--
-- One call per instance heartbeat: registers the caller, drops instances whose heartbeat is
-- older than the timeout, records the caller's usage report per model, and computes every
-- live instance's lease of each limit. Returns the caller's leases. `now` is passed in (the
-- caller's wall clock, in ms): the script never reads a clock, so it is deterministic.
--
-- KEYS[1]  instances  sorted set: instance -> last heartbeat (ms)
-- KEYS[2]  reports    hash: "model\tinstance" -> "ts,u1,u2,u3,u4,demand"
-- KEYS[3]  pauses     hash: model -> paused until (ms)
-- ARGV: now, instance, timeout_ms, channel, model count, then per model 11 values:
--   name, limit x5 (tpm, rpm, tpd, rpd, concurrent; -1 = not set),
--   used x4 (tokens and requests in the minute and day windows), demand
-- Reply: { live instance count, membership changed (0/1),
--          per model: lease x5 (-1 = not set), paused until (0 = not paused) }

local now = tonumber(ARGV[1])
local me = ARGV[2]
local timeout = tonumber(ARGV[3])
local channel = ARGV[4]
local models = tonumber(ARGV[5])
local WINDOWS = {60000, 60000, 86400000, 86400000}

-- Six commands a call, whatever the number of models and instances (the EVALSHA and five
-- here; a ZREM and an HDEL only when an instance has gone): Redis's work grows with the
-- fleet, not with the traffic.
local fresh = redis.call('ZADD', KEYS[1], now, me)
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local live, dead, is_live = {}, {}, {}
for i = 1, #members, 2 do
  local id, seen = members[i], tonumber(members[i + 1])
  if seen < now - timeout then
    dead[#dead + 1] = id
  else
    live[#live + 1] = id
    is_live[id] = true
  end
end
local changed = fresh == 1 or #dead > 0

-- `redis.call(command, key, ...list)`, in pieces small enough for Lua's stack (a fleet
-- with thousands of API keys' pools has thousands of fields); the replies, joined.
local function call_in_pieces(command, key, list)
  local out = {}
  for from = 1, #list, 1000 do
    local reply = redis.call(command, key, unpack(list, from, math.min(from + 999, #list)))
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do out[#out + 1] = v end
    end
  end
  return out
end

local function split(s)
  local out = {}
  for v in string.gmatch(s, '[^,]+') do out[#out + 1] = tonumber(v) end
  return out
end

-- Every report, by model: live instances' and the recent ones of instances gone (ghosts,
-- whose usage stays in the windows it was made in).
local reports, stale = {}, {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local tab = string.find(field, '\t', 1, true)
  if tab then
    local model, id = string.sub(field, 1, tab - 1), string.sub(field, tab + 1)
    local r = split(value)
    if not is_live[id] and now - r[1] > WINDOWS[3] then
      stale[#stale + 1] = field
    else
      reports[model] = reports[model] or {}
      reports[model][id] = r
    end
  end
end
call_in_pieces('ZREM', KEYS[1], dead)
call_in_pieces('HDEL', KEYS[2], stale)

-- Every model's pause, in one read.
local names = {}
for m = 1, models do names[m] = ARGV[6 + (m - 1) * 11] end
local pauses = call_in_pieces('HMGET', KEYS[3], names)

local reply = {#live, changed and 1 or 0}
local writes = {}
local arg = 6
for m = 1, models do
  local name = ARGV[arg]
  local limits, used = {}, {}
  for d = 1, 5 do limits[d] = tonumber(ARGV[arg + d]) end
  for d = 1, 4 do used[d] = tonumber(ARGV[arg + 5 + d]) end
  local demand = tonumber(ARGV[arg + 10])
  arg = arg + 11
  writes[#writes + 1] = name .. '\t' .. me
  writes[#writes + 1] = now .. ',' .. used[1] .. ',' .. used[2] .. ',' .. used[3] .. ','
    .. used[4] .. ',' .. demand
  reports[name] = reports[name] or {}
  reports[name][me] = {now, used[1], used[2], used[3], used[4], demand}

  -- Weights: each live instance's demand, plus an even floor (a fifth of the mean demand
  -- each, so an idle instance keeps a little and no demand at all is an even split).
  local total_demand = 0
  for _, id in ipairs(live) do
    local r = reports[name][id]
    total_demand = total_demand + (r and r[6] or 0)
  end
  local floor = total_demand > 0 and (total_demand * 0.2 / #live) or 1
  local weights, total_weight = {}, 0
  for _, id in ipairs(live) do
    local r = reports[name][id]
    weights[id] = (r and r[6] or 0) + floor
    total_weight = total_weight + weights[id]
  end

  for d = 1, 5 do
    local limit = limits[d]
    if limit < 0 then
      reply[#reply + 1] = -1
    elseif d == 5 then
      -- Concurrency: whole requests, by largest remainder, so the leases add up to the limit.
      local leases, order, given = {}, {}, 0
      for _, id in ipairs(live) do
        local exact = limit * weights[id] / total_weight
        leases[id] = math.floor(exact)
        given = given + leases[id]
        order[#order + 1] = {id, exact - leases[id]}
      end
      table.sort(order, function(a, b)
        if a[2] == b[2] then return a[1] < b[1] end
        return a[2] > b[2]
      end)
      for i = 1, limit - given do
        local id = order[((i - 1) % #order) + 1][1]
        leases[id] = leases[id] + 1
      end
      reply[#reply + 1] = leases[me]
    else
      -- A windowed limit: what the gone instances used is still in the window; the rest is
      -- shared by weight. An instance that already used more than its share keeps that
      -- usage (it admits nothing until its usage falls) and the excess comes out of the
      -- others' room, so the leases with the usage beyond them never add up to more than
      -- the limit.
      local ghost = 0
      for id, r in pairs(reports[name]) do
        if not is_live[id] and now - r[1] < WINDOWS[d] then
          ghost = ghost + r[d + 1]
        end
      end
      local available = math.max(limit - ghost, 0)
      local target, excess, room = {}, 0, 0
      for _, id in ipairs(live) do
        local r = reports[name][id]
        local u = r and r[d + 1] or 0
        target[id] = available * weights[id] / total_weight
        if u > target[id] then
          excess = excess + (u - target[id])
        else
          room = room + (target[id] - u)
        end
      end
      local r = reports[name][me]
      local u = r[d + 1]
      local lease = target[me]
      if u <= target[me] and excess > 0 then
        if room > excess then
          lease = target[me] - excess * (target[me] - u) / room
        else
          lease = u
        end
      end
      reply[#reply + 1] = math.floor(lease)
    end
  end
  local paused = pauses[m] and tonumber(pauses[m])
  reply[#reply + 1] = (paused and paused > now) and paused or 0
end
call_in_pieces('HSET', KEYS[2], writes)

if changed then
  redis.call('PUBLISH', channel, 'members')
end
return reply

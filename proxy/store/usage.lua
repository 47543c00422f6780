-- One usage row, applied at most once (SPEC section 4): the batch marker is set in
-- the same atomic script as the counts, so a retried batch skips rows already counted.
-- All keys share the row's {hash tag}, so this runs unchanged on Redis Cluster.
-- The row's sketches (SPEC section 15) are merged in the same step, by the rules of
-- proxy/sketch.py (Sketch.merge): a side's floor stands in for an item it lacks,
-- counts and errors add, the `capacity` largest counts are kept.
--
-- KEYS[1]  batch marker     kf:u:{<s>:<id>}:b:<batch id>:<hour>
-- KEYS[2]  hourly counts    kf:u:{<s>:<id>}:h:<hour start>
-- KEYS[3]  daily counts     kf:u:{<s>:<id>}:d:<day start>
-- KEYS[4]  hourly sketches  kf:u:{<s>:<id>}:s:h:<hour start>  (a hash: dimension -> text)
-- KEYS[5]  daily sketches   kf:u:{<s>:<id>}:s:d:<day start>
-- ARGV[1..3]  lifetimes in seconds: marker, hourly, daily
-- ARGV[4]     sketch capacity; ARGV[5] n, the number of sketches
-- ARGV[6..5+2n]  dimension, sketch text, ...
-- ARGV[6+2n..]   field, value, field, value, ...
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end

local function parse(text)
  local items, n = {}, 0
  if not text then return items, 0 end
  for line in string.gmatch(text, '[^\n]+') do
    local c, e, b, item = string.match(line, '^(%d+)\t(%d+)\t(%d+)\t(.*)$')
    if c then
      items[item] = {tonumber(c), tonumber(e), tonumber(b)}
      n = n + 1
    end
  end
  return items, n
end

local function floor(items, n, capacity)
  if n < capacity then return 0 end
  local least
  for _, v in pairs(items) do
    if not least or v[1] < least then least = v[1] end
  end
  return least or 0
end

local function merge(old, new, capacity)
  local a, na = parse(old)
  local b, nb = parse(new)
  local fa, fb = floor(a, na, capacity), floor(b, nb, capacity)
  local out = {}
  for item, v in pairs(a) do out[item] = {v[1] + fb, v[2] + fb, v[3]} end
  for item, v in pairs(b) do
    local o = out[item]
    if o then
      o[1], o[2], o[3] = o[1] + v[1] - fb, o[2] + v[2] - fb, o[3] + v[3]
    else
      out[item] = {v[1] + fa, v[2] + fa, v[3]}
    end
  end
  local list = {}
  for item, v in pairs(out) do list[#list + 1] = {item, v[1], v[2], v[3]} end
  table.sort(list, function(x, y)
    if x[2] ~= y[2] then return x[2] > y[2] end
    return x[1] < y[1]
  end)
  local lines = {}
  for i = 1, math.min(#list, capacity) do
    local e = list[i]
    lines[i] = string.format('%d\t%d\t%d\t%s\n', e[2], e[3], e[4], e[1])
  end
  return table.concat(lines)
end

local capacity, sketches = tonumber(ARGV[4]), tonumber(ARGV[5])
for i = 6, 5 + 2 * sketches, 2 do
  for k = 4, 5 do
    local old = redis.call('HGET', KEYS[k], ARGV[i])
    redis.call('HSET', KEYS[k], ARGV[i], merge(old or nil, ARGV[i + 1], capacity))
  end
end
if sketches > 0 then
  redis.call('EXPIRE', KEYS[4], ARGV[2])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
end
for i = 6 + 2 * sketches, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1

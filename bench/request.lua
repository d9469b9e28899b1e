-- wrk script shared by every benchmark row: one request shape, chosen by environment variables,
-- and a status count so only 2xx answers count as success (wrk alone counts 3xx as success too).
--
--   BENCH_METHOD      GET (default) or POST
--   BENCH_AUTH        value of the Authorization header, if any
--   BENCH_BODY_FILE   file whose bytes are the request body (sent as application/json)
--   BENCH_PATHS_FILE  file of request paths, one a line, used round robin (e.g. /api/v1/tasks/{id})
--   BENCH_HEADER      one more header, "Name: value" (e.g. anthropic-version: 2023-06-01)
--
-- done() prints one line, "BENCH_RESULT {json}", that bench/run.py parses.

local method = os.getenv("BENCH_METHOD") or "GET"
local auth = os.getenv("BENCH_AUTH")
local body_file = os.getenv("BENCH_BODY_FILE")
local paths_file = os.getenv("BENCH_PATHS_FILE")
local extra_header = os.getenv("BENCH_HEADER")

local threads = {}

local function read_all(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  non2xx = 0
  first_bad = ""
  local headers = {}
  if auth then headers["Authorization"] = auth end
  if extra_header then
    local name, value = extra_header:match("^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  local body = nil
  if body_file then
    body = read_all(body_file)
    headers["Content-Type"] = "application/json"
  end
  requests = {}
  if paths_file then
    for line in io.lines(paths_file) do
      if #line > 0 then table.insert(requests, wrk.format(method, line, headers, body)) end
    end
  else
    table.insert(requests, wrk.format(method, nil, headers, body))
  end
  next_index = math.random(#requests)
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    non2xx = non2xx + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local total_ok, total_bad, sample = 0, 0, ""
  for _, thread in ipairs(threads) do
    total_ok = total_ok + (thread:get("ok") or 0)
    total_bad = total_bad + (thread:get("non2xx") or 0)
    local bad = thread:get("first_bad") or ""
    if sample == "" then sample = bad end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"ok":%d,"non2xx":%d,"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"first_non2xx":%s}\n',
    total_ok, total_bad, summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    json_string(sample)))
end

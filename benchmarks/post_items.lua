-- wrk script: POST /api/v1/items with a name no other request has used.
-- Usage: wrk -s post_items.lua URL -- PREFIX   (PREFIX: unique per run)

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

local prefix = "bench"
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  prefix = (args[1] or prefix) .. "-t" .. tostring(thread_number or 0)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"name": "%s-%d", "description": "Made by the benchmark."}', prefix, counter
  )
  return wrk.format("POST", "/api/v1/items", headers, body)
end

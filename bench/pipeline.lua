-- wrk script: 16 requests pipelined in one write (TechEmpower plaintext style).
-- Run: wrk -t1 -c64 -d5s -s bench/pipeline.lua http://127.0.0.1:PORT/
local depth = tonumber(os.getenv("PIPELINE") or "16")
init = function(args)
    local r = {}
    for i = 1, depth do
        r[i] = wrk.format(nil, "/")
    end
    req = table.concat(r)
end
request = function()
    return req
end

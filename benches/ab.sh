#!/bin/bash
# Two switchyard binaries side by side, interleaved round by round with nginx as the
# reference, in front of one nginx upstream (return 200): for "did this change cost
# anything". Usage: benches/ab.sh BIN_A BIN_B   (env: ROUNDS=6, DUR=6s)
# Prints per round: requests/s, p99, and CPU time per request of each gateway process
# (from /proc/PID/stat, so wrk's share of the cores does not count). Loopback only.
set -u
BIN_A=${1:?usage: benches/ab.sh BIN_A BIN_B}
BIN_B=${2:?usage: benches/ab.sh BIN_A BIN_B}
command -v nginx >/dev/null || PATH=$PATH:/usr/sbin
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs nginx and wrk (apt-get install nginx-light wrk)" >&2; exit 2; }
dir=$(mktemp -d); UP=18001 PX=18002 A=18003 AA=18004 B=18005 BA=18006
body='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'
common="worker_processes 1; error_log $dir/nginx-error.log warn; events { worker_connections 20000; }"
cat > $dir/up.conf <<NGX
$common
pid $dir/up.pid;
http { access_log off; client_body_temp_path $dir/a1; proxy_temp_path $dir/a2; fastcgi_temp_path $dir/a3; uwsgi_temp_path $dir/a4; scgi_temp_path $dir/a5; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '$body'; } } }
NGX
cat > $dir/px.conf <<NGX
worker_processes 2; error_log $dir/nginx-error2.log warn; events { worker_connections 20000; }
pid $dir/px.pid;
http { access_log off; client_body_temp_path $dir/b1; proxy_temp_path $dir/b2; fastcgi_temp_path $dir/b3; uwsgi_temp_path $dir/b4; scgi_temp_path $dir/b5; keepalive_requests 1000000;
  upstream llm { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$PX; location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }
NGX
for p in "$A $AA" "$B $BA"; do set -- $p; cat > $dir/sy-$1.yaml <<YAML
listen: 127.0.0.1:$1
admin: { listen: 127.0.0.1:$2 }
providers:
  old: { base_url: "http://127.0.0.1:$UP/v1", pricing: { deepseek-chat: { input: 0.27, output: 1.10 } } }
  new: { base_url: "http://127.0.0.1:$UP/v1", pricing: { deepseek-chat: { input: 0.14, output: 0.42 } } }
migration: { from: old, to: new, phases: [ { name: half, percent: 50 } ], phase: half }
health_check: { interval: 60s }
server: { access_log: false, max_connections: 50000 }
state_file: $dir/state-$1.json
YAML
done
cat > $dir/post.lua <<'LUA'
local counter = 0
local body = '{"model":"deepseek-chat","messages":[{"role":"user","content":"Say hello."}]}'
function setup(thread) thread:set("tid", tostring(math.random(1, 1e9))) end
function request()
  counter = counter + 1
  return wrk.format("POST", "/v1/chat/completions", { ["Content-Type"] = "application/json", ["x-request-id"] = tid .. "-" .. counter }, body)
end
LUA
nginx -c $dir/up.conf -p $dir; nginx -c $dir/px.conf -p $dir
SWITCHYARD_LOG=warn "$BIN_A" serve --config $dir/sy-$A.yaml 2>$dir/a.log & pa=$!
SWITCHYARD_LOG=warn "$BIN_B" serve --config $dir/sy-$B.yaml 2>$dir/b.log & pb=$!
sleep 2
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
run() { # name port pid
  local c0=""; [ -n "$3" ] && c0=$(cpu $3)
  local out; out=$(wrk -t2 -c64 -d${DUR:-6s} --latency -s $dir/post.lua http://127.0.0.1:$2/v1/chat/completions 2>&1)
  local rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local cpuus=""
  if [ -n "$3" ]; then local c1=$(cpu $3); local n=$(echo "$out" | awk '/requests in/ {print $1}'); cpuus=$(awk -v d=$((c1-c0)) -v n=$n 'BEGIN{printf "%.1f", d*10000/n}'); fi
  echo "$1 rps=$rps p99=$p99 cpu_us_per_req=$cpuus"
}
for r in $(seq "${ROUNDS:-6}"); do
  run nginx $PX ""
  run A $A $pa
  run B $B $pb
done
kill $pa $pb; nginx -c $dir/up.conf -p $dir -s stop 2>/dev/null; nginx -c $dir/px.conf -p $dir -s stop 2>/dev/null; rm -rf "$dir"

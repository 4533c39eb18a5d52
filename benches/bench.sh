#!/usr/bin/env bash
# make bench: switchyard side by side with nginx, in front of the same upstream, on this machine.
#
#   direct      wrk -> upstream (nginx `return 200` with a chat-completion JSON)
#   nginx       wrk -> nginx reverse proxy (keep-alive upstream pool) -> upstream
#   hyper-floor wrk -> a bare hyper proxy (benches/micro/hyper_floor.rs: hyper server in,
#                      hyper client out, nothing else) -> upstream: what hyper alone costs
#   switchyard  wrk -> switchyard (two providers on that upstream, 50/50 split, metrics,
#                      usage accounting and request events on) -> upstream
#
# Rounds are interleaved (direct, nginx, switchyard, direct, …) so drift on a shared
# machine hits all three alike; the table shows the median round. Then: SSE first-chunk
# overhead, idle RSS, peak RSS with 10,000 open streams, and 100 reloads under load.
# Loopback only. Env: ROUNDS (3), DURATION (8s), CONNECTIONS (64), STREAMS (10000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
# 10,000 streams need 20,000+ sockets in the gateway (client side + upstream side); where the
# open-files hard limit is 20000 (as on this project's machines) the default stays under it.
hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=1048576
default_streams=$(( hard >= 20600 ? 10000 : (hard - 600) / 2 ))
STREAMS=${STREAMS:-$default_streams}
BIN=target/release/switchyard

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  echo "installing nginx-light and wrk (Debian packages)…" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi
  $SUDO apt-get install -y -q nginx-light wrk >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q nginx-light wrk >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$BIN" ] || cargo build --release --locked
FLOOR=target/release/hyper-floor
cargo build --release --locked -q -p switchyard-bench --bin hyper-floor

dir=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$dir/up.pid" ] && kill "$(cat "$dir/up.pid")" 2>/dev/null || true
  [ -f "$dir/px.pid" ] && kill "$(cat "$dir/px.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

UP=17001 PX=17002 SY=17003 SYA=17004 MOCK=17005 FL=17006
body='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'

common="worker_processes auto; error_log $dir/nginx-error.log warn; events { worker_connections 20000; }"
cat > "$dir/upstream.conf" <<NGX
$common
pid $dir/up.pid;
http {
  access_log off;
  client_body_temp_path $dir/up-body; proxy_temp_path $dir/up-proxy;
  fastcgi_temp_path $dir/up-f; uwsgi_temp_path $dir/up-u; scgi_temp_path $dir/up-s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '$body'; }
  }
}
NGX
cat > "$dir/proxy.conf" <<NGX
$common
pid $dir/px.pid;
http {
  access_log off;
  client_body_temp_path $dir/px-body; proxy_temp_path $dir/px-proxy;
  fastcgi_temp_path $dir/px-f; uwsgi_temp_path $dir/px-u; scgi_temp_path $dir/px-s;
  keepalive_requests 1000000;
  upstream llm { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$PX;
    location / {
      proxy_pass http://llm;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
cat > "$dir/switchyard.yaml" <<YAML
listen: 127.0.0.1:$SY
admin: { listen: 127.0.0.1:$SYA }
providers:
  old:
    base_url: http://127.0.0.1:$UP/v1
    pricing: { deepseek-chat: { input: 0.27, output: 1.10 } }
  new:
    base_url: http://127.0.0.1:$UP/v1
    pricing: { deepseek-chat: { input: 0.14, output: 0.42 } }
migration:
  from: old
  to: new
  phases: [ { name: half, percent: 50 } ]
  phase: half
health_check: { interval: 60s }
server: { access_log: false, max_connections: 50000 }
YAML
cat > "$dir/post.lua" <<'LUA'
local counter = 0
local body = '{"model":"deepseek-chat","messages":[{"role":"user","content":"Say hello."}]}'
function setup(thread) thread:set("tid", tostring(math.random(1, 1e9))) end
function request()
  counter = counter + 1
  return wrk.format("POST", "/v1/chat/completions",
    { ["Content-Type"] = "application/json", ["x-request-id"] = tid .. "-" .. counter }, body)
end
LUA

"$NGINX" -c "$dir/upstream.conf" -p "$dir" 2>/dev/null
"$NGINX" -c "$dir/proxy.conf" -p "$dir" 2>/dev/null
"$FLOOR" "127.0.0.1:$FL" "127.0.0.1:$UP" & pids+=($!)
SWITCHYARD_LOG=warn "$BIN" serve --config "$dir/switchyard.yaml" 2>"$dir/switchyard.log" & sy=$!; pids+=($sy)
for _ in $(seq 100); do curl -fs "127.0.0.1:$SYA/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
idle_rss=$(awk '/VmRSS/ {print $2}' /proc/$sy/status)

# wrk prints "Requests/sec: N" and, with --latency, "50% 1.23ms" / "99% 4.56ms".
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; printf "%.3f", v}'; }
run_wrk() { # port -> "rps p50 p99 errors"
  local out; out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$dir/post.lua" "http://127.0.0.1:$1/v1/chat/completions" 2>&1)
  local rps p50 p99 non2xx sockerr
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  sockerr=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
  echo "$rps $p50 $p99 $((non2xx + sockerr))"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t2 -c$CONNECTIONS -d$DURATION; $ROUNDS interleaved rounds" >&2
declare -A RPS P50 P99 ERR
for r in $(seq "$ROUNDS"); do
  for target in direct nginx hyper-floor switchyard; do
    case $target in direct) port=$UP;; nginx) port=$PX;; hyper-floor) port=$FL;; switchyard) port=$SY;; esac
    read -r rps p50 p99 errs < <(run_wrk $port)
    RPS[$target]+="$rps "; P50[$target]+="$p50 "; P99[$target]+="$p99 "; ERR[$target]=$(( ${ERR[$target]:-0} + errs ))
    echo "round $r $target: $rps req/s p50 ${p50}ms p99 ${p99}ms errors $errs" >&2
  done
done
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
printf '\n| target | requests/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|\n'
for t in direct nginx hyper-floor switchyard; do
  printf '| %s | %s | %s | %s | %s |\n' "$t" "$(med "${RPS[$t]}")" "$(med "${P50[$t]}")" "$(med "${P99[$t]}")" "${ERR[$t]}"
done
sy_rps=$(med "${RPS[switchyard]}"); ng_rps=$(med "${RPS[nginx]}"); di_rps=$(med "${RPS[direct]}")
sy_p99=$(med "${P99[switchyard]}"); ng_p99=$(med "${P99[nginx]}")
fl_rps=$(med "${RPS[hyper-floor]}"); fl_p99=$(med "${P99[hyper-floor]}")
awk -v s="$sy_rps" -v n="$ng_rps" -v d="$di_rps" -v sp="$sy_p99" -v np="$ng_p99" -v f="$fl_rps" -v fp="$fl_p99" 'BEGIN {
  printf "\nswitchyard/nginx throughput %.2fx (target >= 1.10x), p99 %.2fx (target <= 1.00x); switchyard/direct %.2fx\n", s/n, sp/np, s/d
  printf "hyper-floor/nginx throughput %.2fx, p99 %.2fx; switchyard/hyper-floor throughput %.2fx\n", f/n, fp/np, s/f }'

# Reload cost: 100 reloads during one switchyard run.
(
  sleep 0.5
  for _ in $(seq 100); do curl -fs -X POST "127.0.0.1:$SYA/admin/reload" >/dev/null || echo "reload failed" >&2; sleep 0.05; done
) & reloader=$!
read -r rps p50 p99 errs < <(run_wrk $SY)
wait $reloader
version=$(curl -fs "127.0.0.1:$SYA/admin/status" | sed -n 's/.*"config_version": *\([0-9]*\).*/\1/p')
printf '\nreloads under load: config_version %s after 100 reloads; %s req/s, p99 %sms, errors %s (target 0)\n' "$version" "$rps" "$p99" "$errs"

# SSE: time to first chunk through switchyard vs straight to a streaming mock.
"$BIN" mock --listen 127.0.0.1:$MOCK --name sse --chunks 5 --chunk-delay 2ms >/dev/null 2>&1 & pids+=($!)
sed -i "s#http://127.0.0.1:$UP/v1#http://127.0.0.1:$MOCK/v1#g" "$dir/switchyard.yaml"
curl -fs -X POST "127.0.0.1:$SYA/admin/reload" >/dev/null
sleep 0.3
ttft() { "$BIN" loadtest --url "$1" --requests 2000 --concurrency 16 --stream --json | tr -d ' \n' | sed -n "s/.*\"ttft_ms\":{[^}]*\"$2\":\([0-9.]*\).*/\1/p"; }
d50=$(ttft "http://127.0.0.1:$MOCK/v1" p50_ms); d99=$(ttft "http://127.0.0.1:$MOCK/v1" p99_ms)
s50=$(ttft "http://127.0.0.1:$SY/v1" p50_ms); s99=$(ttft "http://127.0.0.1:$SY/v1" p99_ms)
awk -v d50="$d50" -v d99="$d99" -v s50="$s50" -v s99="$s99" 'BEGIN {
  printf "SSE time to first token: direct p50 %.3fms p99 %.3fms; through switchyard p50 %.3fms p99 %.3fms; overhead p50 %.3fms p99 %.3fms (target <= 1ms at p99)\n", d50, d99, s50, s99, s50-d50, s99-d99 }'

# Memory: idle, then 10,000 streams held open at once (each 20 chunks, 500 ms apart).
peak=0
# Streams that stay open: the mock paces 20 chunks 500 ms apart.
kill "${pids[-1]}" 2>/dev/null || true
wait "${pids[-1]}" 2>/dev/null || true
"$BIN" mock --listen 127.0.0.1:$MOCK --name sse --chunks 20 --chunk-delay 500ms >/dev/null 2>&1 & pids+=($!)
sleep 0.3
"$BIN" loadtest --url "http://127.0.0.1:$SY/v1/chat/completions" --mode concurrent --requests "$STREAMS" --concurrency "$STREAMS" --stream --timeout 120s --json >"$dir/streams.json" 2>/dev/null &
lt=$!
while kill -0 $lt 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' /proc/$sy/status); [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 0.2
done
ok=$(tr -d ' \n' <"$dir/streams.json" | sed -n 's/.*"succeeded":\([0-9]*\).*/\1/p')
printf 'memory: idle RSS %.1f MB (target <= 20); peak RSS %.1f MB with %s concurrent streams, %s completed (target <= 150)\n' \
  "$(awk -v k="$idle_rss" 'BEGIN{print k/1024}')" "$(awk -v k="$peak" 'BEGIN{print k/1024}')" "$STREAMS" "${ok:-0}"
